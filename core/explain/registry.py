"""The one lookup of explainers, and the generic questions the rest of the engine asks of them.

Spec validation (`explainer_problem`), training (`map_source`, `explaining_forwards`,
`explanation_maps`), the evaluation and the heatmaps (`shown_explainers`, `get_explainer`)
read `EXPLAINERS` and nothing else, so an explainer that registers itself here (`@register`
on its class) is a spec choice, a loss, a metric and a heatmap at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TypeVar

import torch
from torch import nn

from core.explain.base import Explainer, ForwardPass
from core.models import explained_layer

# Every explainer by name, in registration order (the order specs and messages list them).
EXPLAINERS: dict[str, Explainer] = {}

# Every model has an explained layer, so Grad-CAM explains them all: the scale on which any two jobs compare.
COMMON_EXPLAINER = "gradcam"

E = TypeVar("E", bound=type[Explainer])


def register(cls: E) -> E:
    """Class decorator: make `cls` (an `Explainer` subclass) available under its `name`.

    Names are unique: a second explainer of one name is an error, not a silent replacement.
    """
    explainer = cls()
    for attribute in ("name", "label", "reference"):
        if not getattr(explainer, attribute, ""):
            raise TypeError(f"{cls.__name__} must set a non-empty `{attribute}`")
    if explainer.name in EXPLAINERS:
        raise ValueError(f"an explainer named '{explainer.name}' is already registered")
    EXPLAINERS[explainer.name] = explainer
    return cls


def _unknown(name: str) -> str:
    return f"unknown explainer '{name}'; known: {', '.join(EXPLAINERS)}"


def get_explainer(name: str) -> Explainer:
    if name not in EXPLAINERS:
        raise ValueError(_unknown(name))
    return EXPLAINERS[name]


def shown_explainers(explainer: str) -> list[str]:
    """The explainers a job's heatmaps and explanation metrics show: its own, then Grad-CAM beside it.

    Grad-CAM fits every model here, so it is the common scale on which any two jobs compare,
    whatever explainer each was taught with; a Grad-CAM job shows Grad-CAM alone.
    """
    return list(dict.fromkeys((get_explainer(explainer).name, COMMON_EXPLAINER)))


def student_side(explainer: str) -> str:
    """The explainer whose differentiable form explains the student when the job's explainer is `explainer`.

    Itself, except for explainers too costly to differentiate on every step (`Explainer.student_explainer`):
    the score-based CAMs and Smooth Grad-CAM++ give the teacher's target maps, and the student is
    explained by the cheapest method of the same layer (README, "The CAM family").
    """
    return get_explainer(explainer).student_explainer or explainer


def explainer_problem(explainer: str, arch: str) -> str | None:
    """Why `explainer` cannot explain a model of architecture `arch`, or None when it fits.

    Spec validation asks this for the teacher and the student; each explainer states its own
    rule (`Explainer.arch_problem`), e.g. one that reads what only some networks have.
    """
    if explainer not in EXPLAINERS:
        return _unknown(explainer)
    return EXPLAINERS[explainer].arch_problem(arch)


def map_source(model: nn.Module, explainer: str) -> nn.Module | None:
    """The module an explainer reads when it is not the explained layer (a second tap), else None.

    The explained layer is tapped anyway (AT, FitNet), so an explainer reading it, or reading
    no layer at all, needs no tap of its own. Raises ValueError when it cannot explain `model`.
    """
    layer = get_explainer(explainer).layer(model)
    return layer if layer is not None and layer is not explained_layer(model) else None


def explanation_context(model: nn.Module, explainer: str | None) -> AbstractContextManager[None]:
    """What a forward of `model` needs while `explainer` explains it (`Explainer.context`); None: nothing."""
    return get_explainer(explainer).context(model) if explainer is not None else nullcontext()


@contextmanager
def explaining_forwards(explainer: str | None, *models: nn.Module) -> Iterator[None]:
    """Every forward of `models` in the state `explainer` explains them in, for a whole distillation stage.

    An explainer whose maps need the models in a mode (`Explainer.context`) has them train in
    it on every step, guided or not, and whatever the explanation weight, so a baseline with
    that explainer and weight 0 trains the same way; the other explainers leave the models as they are.
    """
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(explanation_context(model, explainer))
        yield


def explanation_maps(
    explainer: str, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """The training form of `explainer` on a forward already run: `(N, 1, h, w)` maps of class `target`.

    Checks first that the forward left what the explainer reads, so a wrongly set up caller
    fails with a reason instead of an autograd error. A differentiable map (`create_graph`: the
    student's side) comes from `student_side(explainer)`.
    """
    method = get_explainer(student_side(explainer) if create_graph else explainer)
    if method.needs_layer and forward.activations is None:
        raise ValueError(f"{explainer} needs the tapped activations")
    if method.needs_input_grad and not forward.inputs.requires_grad:
        raise ValueError(f"{explainer} needs inputs that required grad during the forward")
    return method.maps(forward, target, create_graph)
