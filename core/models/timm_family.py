"""The `timm` family: any model `timm.create_model` knows, by name, never pretrained (no download).

`num_classes` and `in_chans` are timm's own head and stem options. Models with a
fixed input size (vision transformers: position embeddings) are built for the
dataset's `image_size`; models that take no size are built without one.
"""

from __future__ import annotations

from functools import cache

from torch import nn


@cache
def names() -> list[str]:
    import timm

    return sorted(timm.list_models())


def is_model(name: str) -> bool:
    import timm

    return bool(timm.is_model(name.split(".", 1)[0]))


def build(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    import timm

    kwargs: dict[str, object] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError:  # a model without an input-size option (convnets): build it without one
            pass
    return timm.create_model(name, **kwargs)
