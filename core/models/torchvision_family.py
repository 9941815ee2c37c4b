"""The `torchvision` family: any classification model of `torchvision.models`, by name, never pretrained.

`torchvision/<name>` builds `torchvision.models.<name>(weights=None, num_classes=...)`;
a stem for other than 3 input channels replaces the model's first convolution
(same geometry, fresh weights). Auxiliary heads (GoogLeNet, Inception) are
switched off: the engine expects one logits tensor from every forward.
"""

from __future__ import annotations

from functools import cache

from torch import nn

NO_AUX_LOGITS = ("googlenet", "inception_v3")
TAKES_IMAGE_SIZE = ("vit_",)  # torchvision ViTs fix their position embedding to one input size


@cache
def names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def is_model(name: str) -> bool:
    return name in names()


def build(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    import torchvision.models as tvm

    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if name in NO_AUX_LOGITS:
        kwargs.update(aux_logits=False, init_weights=True)
    if image_size is not None and name.startswith(TAKES_IMAGE_SIZE):
        kwargs["image_size"] = image_size
    model = tvm.get_model(name, **kwargs)
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return model


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d (in registration order, which is forward order for torchvision) for one taking `in_channels`."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None,
            )
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, new)
            return
    raise ValueError("the model has no Conv2d stem to adapt to other input channels")
