"""What every explainer is: one class per attribution method, with one interface for all of them.

As captum has one class per method with a uniform `attribute()`, each explainer here is a
subclass of `Explainer` that declares what it needs and implements its map in two forms:

- `maps(forward, target, create_graph)`: the TRAINING form. Training must not pay a second
  forward for a map, so it reads what the training forward already left (`ForwardPass`: the
  logits, the tapped layer's output, the inputs) and differentiates the logits already computed.
  With `create_graph` the map stays differentiable in the model's parameters (the student's
  side of the explanation loss); without it, it is a constant (the teacher's target).
- `attribute(model, inputs, target)`: the REFERENCE form, made by captum with its own forward.
  Every map a user sees or a metric reads comes from it (core.explain.reference runs it in
  batches), so the numbers are those of a well-known library.

Both return `(N, 1, h, w)` float maps of class `target[i]` for sample i; the tests pin the two
forms of every registered explainer equal on the same model. The generic code (spec validation,
the training objective, the teacher signals, the evaluation) asks the explainer what it needs
(`needs_layer`, `needs_input_grad`, `arch_problem`, `model_problem`, `layer`, `context`) and
never names a method or a model family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.models import explained_layer


class FeatureTap:
    """Keeps the output of one module from the latest forward pass (a forward hook).

    The model stays an unmodified torchvision/CIFAR module; the activation keeps its
    graph, so an explainer can differentiate the logits with respect to it afterwards.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.activation: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.activation = output

    def take(self) -> torch.Tensor:
        """The activation of the latest forward; taking it drops the tap's reference (no graph kept alive)."""
        if self.activation is None:
            raise RuntimeError("the tapped layer has not run since the last take()")
        activation, self.activation = self.activation, None
        return activation

    def remove(self) -> None:
        self._handle.remove()
        self.activation = None


@dataclass(frozen=True)
class ForwardPass:
    """What one forward of `model` left for the training form to read, so a map costs no second forward.

    - `inputs`: what the model ran on; they required grad before the forward when the explainer
      `needs_input_grad`.
    - `logits`: the forward's output, with its graph.
    - `activations`: the output of `explainer.layer(model)` during that forward (a `FeatureTap`),
      or None when the explainer reads no layer.
    The model itself is there for explainers that need more than the gradient of the logits
    (a classifier's weights, or forwards of their own).
    """

    model: nn.Module
    inputs: torch.Tensor
    logits: torch.Tensor
    activations: torch.Tensor | None = None


def target_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i logits[i, target[i]]: samples do not interact in eval mode, so one backward serves the batch."""
    return logits.gather(1, target.view(-1, 1)).sum()


class Explainer(ABC):
    """One attribution method: what it needs, its training form and its reference (captum) form.

    A subclass sets the class attributes and implements `maps` and `attribute`; registering it
    (`core.explain.registry.register`) makes it a spec choice, a training loss, a metric and a
    heatmap. Explainers are stateless: the registry holds one instance of each.
    """

    name: ClassVar[str]  # the spec's `loss.explanation.explainer` value, e.g. "gradcam"
    label: ClassVar[str]  # how people see it named: heatmap captions, report tables, model card ("Grad-CAM")
    reference: ClassVar[str]  # what makes the maps users see, for the heatmaps' PNG provenance
    # It reads the output of `layer(model)`, tapped during the forward (the explained layer by default).
    needs_layer: ClassVar[bool] = False
    # It differentiates with respect to the input: x must require grad before the forward.
    needs_input_grad: ClassVar[bool] = False
    # Cost of one batch of training-form maps beyond the forward it reads: extra forwards and backwards.
    forward_passes: ClassVar[int] = 0
    backward_passes: ClassVar[int] = 1
    # The explainer whose training form explains the STUDENT when this one's is too costly to differentiate
    # on every step (the score-based CAMs, Smooth Grad-CAM++); None: this one explains both sides.
    student_explainer: ClassVar[str | None] = None

    def cost(self, channels: int) -> tuple[int, int]:
        """(extra forwards, backward passes) of one batch of maps when the explained layer has `channels` channels.

        A forward here is one batch-sized forward of the model: the score-based CAMs run one per
        channel (and per sample draw), which is what the job's cost warning estimates from.
        """
        return self.forward_passes, self.backward_passes

    def arch_problem(self, arch: str) -> str | None:
        """Why this explainer cannot explain a model of architecture `arch` (spec validation), or None."""
        return None

    def model_problem(self, model: nn.Module) -> str | None:
        """Why this explainer cannot explain the built `model`, or None: `arch_problem` for a model in hand."""
        return None

    def check(self, model: nn.Module) -> None:
        """Raise ValueError with `model_problem`'s reason when this explainer cannot explain `model`."""
        if (problem := self.model_problem(model)) is not None:
            raise ValueError(problem)

    def layer(self, model: nn.Module) -> nn.Module | None:
        """The module whose output the training form reads (`ForwardPass.activations`), or None.

        The explained layer when `needs_layer` (the one Grad-CAM, AT and FitNet read, so the
        training forward's one tap serves them all); an explainer reading another module overrides this.
        """
        self.check(model)
        return explained_layer(model) if self.needs_layer else None

    def context(self, model: nn.Module) -> AbstractContextManager[None]:
        """What every forward of `model` needs while this explainer explains it (e.g. a mode); nothing by default."""
        return nullcontext()

    @abstractmethod
    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The training form: `(N, 1, h, w)` float32 maps of class `target` from the forward already run."""

    @abstractmethod
    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reference form: `(N, 1, h, w)` maps made by captum with its own forward.

        The model is in eval mode and inside `context(model)`; `inputs` are a private copy that
        requires grad when `needs_input_grad`. captum is imported here, not at module import, so
        reading the explainer names (spec validation in the API) never loads it.
        """
