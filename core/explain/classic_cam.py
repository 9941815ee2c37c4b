"""CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016):
relu(sum_k W_tk A_k), W the classifier's weights, for a network whose logits are W mean_hw(A) + b.

Only such a head (a linear classifier right after global average pooling of the explained layer)
makes the classifier's weights the channels' weights; any other head (ConvNeXt's LayerNorm after
pooling, a ViT's tokens, an MLP) is refused by spec validation (422 naming `cam` and the reason)
and, for a model in hand, by a probe forward that checks the identity (`model_problem`). No
gradient: the map is differentiable in the parameters as it stands. torchcam's CAM does not
apply the ReLU (the test pins that).

Selected by `{"loss": {"explanation": {"explainer": "cam"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.explain.base import ForwardPass
from core.explain.cam import CamExplainer, tapped_forward
from core.explain.registry import register
from core.models import explained_layer, split_arch

# The architectures whose head is a linear layer over the average-pooled explained layer (by family).
_LINEAR_HEADS = {"cifar": ("resnet", "cnn"), "torchvision": ("resnet", "resnext", "wide_resnet")}
_VERDICT_KEY = "_cam_head_problem"  # a model's probe verdict, in its __dict__ (its head never changes)


def classifier(model: nn.Module) -> nn.Linear | None:
    """The model's final linear classifier: timm's `get_classifier()`, else `fc`, else the last nn.Linear."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else getattr(model, "fc", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def _probe_problem(model: nn.Module) -> str | None:
    """Why logits != W mean_hw(A) + b on a probe input (eval mode, no grad), or None when they agree."""
    head = classifier(model)
    if head is None:
        return "the model has no linear classifier"
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        return "the model has no convolution"
    probe = torch.randn(2, first_conv.in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward = tapped_forward(model, probe.to(head.weight.device), explained_layer(model))
    except Exception as exc:  # noqa: BLE001 - a model that cannot run the probe cannot be checked
        return f"its head could not be checked ({type(exc).__name__})"
    finally:
        model.train(was_training)
    pooled = forward.activations.float().mean(dim=(2, 3)) if forward.activations is not None else None
    if pooled is None or pooled.shape[1] != head.in_features:
        return "the classifier does not read the explained layer's channels"
    if not torch.allclose(head(pooled.to(head.weight.dtype)).float(), forward.logits.float(), rtol=1e-3, atol=1e-4):
        return "its logits are not a linear function of the average-pooled explained layer"
    return None


@register
class Cam(CamExplainer):
    """CAM on the explained layer: the classifier's row of the target class weights the channels."""

    name: ClassVar[str] = "cam"
    label: ClassVar[str] = "CAM"
    backward_passes: ClassVar[int] = 0

    def arch_problem(self, arch: str) -> str | None:
        family, name = split_arch(arch)
        if name.startswith(_LINEAR_HEADS.get(family, ())):
            return None
        return (f"the {self.name} explainer needs a linear classifier right after global average pooling of the "
                f"explained layer (ResNets: resnet*, cnn, torchvision/resnet*, resnext*, wide_resnet*); "
                f"'{arch}' has another head")

    def model_problem(self, model: nn.Module) -> str | None:
        if _VERDICT_KEY not in model.__dict__:
            model.__dict__[_VERDICT_KEY] = _probe_problem(model)
        problem = model.__dict__[_VERDICT_KEY]
        return None if problem is None else f"the {self.name} explainer cannot explain this model: {problem}"

    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        head = classifier(forward.model)
        assert head is not None
        weights = head.weight[target].float()
        return weights if create_graph else weights.detach()
