"""Architecture names -> builders: one small registry of families, keyed by name prefix.

A name is `<family>/<model>` (`timm/convnext_tiny`, `torchvision/resnet50`) or a
short name: the CIFAR models (`resnet20`, `cnn`, ...) and the aliases that
predate families (`resnet18` = `torchvision/resnet18`). A family is one module
with `build(name, num_classes, in_channels, image_size)`, `names()` and
`is_model(name)`; adding a family is one module and one line in `FAMILIES`.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from torch import nn

# name prefix -> the module that builds that family (imported only when a name of it is used)
FAMILIES: dict[str, str] = {
    "cifar": "core.models.cifar",
    "torchvision": "core.models.torchvision_family",
    "timm": "core.models.timm_family",
    "bcos": "core.models.bcos_family",
}
DEFAULT_FAMILY = "cifar"  # a short name without a prefix
ALIASES: dict[str, str] = {
    "resnet18": "torchvision/resnet18",
    "resnet34": "torchvision/resnet34",
    "mobilenet_v3_small": "torchvision/mobilenet_v3_small",
}
MAX_SUGGESTIONS = 5


class UnknownArchitecture(ValueError):
    """An architecture name no family knows; the message lists close matches."""


def family_module(family: str) -> ModuleType:
    return importlib.import_module(FAMILIES[family])


def split_arch(arch: str) -> tuple[str, str]:
    """`(family, model name)` of an architecture name, aliases resolved; no check that the model exists."""
    arch = ALIASES.get(arch, arch)
    family, sep, name = arch.partition("/")
    if not sep:
        return DEFAULT_FAMILY, arch
    return family, name


def check_arch(arch: str) -> str:
    """`arch` itself if some family builds it, else UnknownArchitecture naming close matches."""
    family, name = split_arch(arch)
    if family not in FAMILIES:
        raise UnknownArchitecture(
            f"unknown model family '{family}' in '{arch}'; families: {', '.join(sorted(FAMILIES))}"
        )
    if name and family_module(family).is_model(name):
        return arch
    suggestions = close_matches(arch)
    hint = f"; did you mean: {', '.join(suggestions)}" if suggestions else ""
    raise UnknownArchitecture(f"unknown architecture '{arch}'{hint} (names: 'timm/<name>', 'torchvision/<name>', "
                              f"'bcos/<name>', or a short name such as resnet20)")


def close_matches(arch: str) -> list[str]:
    """Known names spelled like `arch`: the same model in another family first, then by similarity."""
    _, name = split_arch(arch)
    candidates: list[str] = list(ALIASES)
    for family in FAMILIES:
        prefix = "" if family == DEFAULT_FAMILY else f"{family}/"
        candidates += [prefix + known for known in family_module(family).names()]
    exact = [candidate for candidate in candidates if candidate.rpartition("/")[2] == name and candidate != arch]
    similar = difflib.get_close_matches(arch, candidates, n=MAX_SUGGESTIONS, cutoff=0.6)
    similar += difflib.get_close_matches(name, candidates, n=MAX_SUGGESTIONS, cutoff=0.6)
    ordered = list(dict.fromkeys(exact + similar))
    return ordered[:MAX_SUGGESTIONS]


def build_model(
    arch: str, num_classes: int, in_channels: int, image_size: int | None = None, layer: str | None = None
) -> nn.Module:
    """A fresh (randomly initialised, never downloaded) classifier of `arch`.

    `image_size` matters only to models with a fixed input size (vision transformers).
    `layer` overrides the explained layer by module path (see core.models.layers).
    Raises KeyError for an unknown name (kept from the days of a fixed zoo; the message lists matches).
    """
    try:
        check_arch(arch)
    except UnknownArchitecture as exc:
        raise KeyError(str(exc)) from None
    family, name = split_arch(arch)
    model = family_module(family).build(name, num_classes, in_channels, image_size)
    if layer is not None:
        from core.models.layers import set_explained_layer

        set_explained_layer(model, layer)
    return model


def input_problem(arch: str, image_size: int) -> str | None:
    """Why `arch` cannot take `image_size` px square images, or None when it can.

    A family module may define `input_problem(name, image_size)` (B-cos plain ViTs need whole
    patches); families without one take every size their builder accepts.
    """
    family, name = split_arch(arch)
    if family not in FAMILIES:
        return None
    check = getattr(family_module(family), "input_problem", None)
    return check(name, image_size) if check is not None else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
