"""What a training stage minimises: the `Objective` interface and the distillation objective.

The loop (core.train.loop) knows only `Objective.step(batch) -> StepOutput`. The distillation
objective asks its terms which signals they read on this step, has the teacher's signal
providers compute exactly those (one teacher forward at most, with a graph only when a
map or the oracle needs it), runs the student once, and lets every term read the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from core.data import DataBundle
from core.models import predict_logits
from core.explain import FeatureTap, ForwardPass, explanation_maps, get_explainer, map_source
from core.models import explained_layer
from core.signals import Batch, TeacherSignals, build_signals
from core.terms import BatchContext, ExplanationSpec, WeightedSum
from core.terms.base import STUDENT_MAPS, TARGET_CLASSES, TARGET_MAPS, TEACHER_FEATURES, TEACHER_LOGITS


@dataclass
class StepOutput:
    loss: torch.Tensor  # the weighted total, with graph
    values: dict[str, torch.Tensor]  # each active term's unweighted value, detached
    logits: torch.Tensor | None = None  # for the train accuracy; None when the model is no classifier


class Objective(Protocol):
    """Turns one batch into a loss; the loop knows nothing else about the stage."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters beyond the model's (the FitNet regressor), optimised with it."""

    def frozen_models(self) -> list[nn.Module]:
        """Models the step runs but does not train (teacher, autoencoder).

        The stage puts them in its memory format, so a resumed stage runs them exactly as the
        interrupted one did, however they were loaded (a teacher trained in this job or read from a file).
        """

    def step(self, batch: Batch) -> StepOutput: ...

    def held_out(self) -> dict[str, float]:
        """Cheap held-out numbers for the history (e.g. test accuracy), computed at each epoch end."""

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model that a resumed stage needs (term parameters, signal caches)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def use_forward(self, module: nn.Module | None) -> None:
        """Run the trained model's forward through `module` (its DDP wrapper on several ranks); None: directly."""

    def merge_ranks(self) -> None:
        """State each rank fills on its own (signal caches) made whole on every rank (a collective)."""


@dataclass
class DistillationObjective:
    """The loss of DESIGN.md's engine for a student (and, with `teacher=None`, for teacher training).

    Choices worth knowing:
    - The oracle input x* feeds the teacher's soft targets only. Its features (AT, FitNet)
      and its explanation maps are taken on x, the student's input, from the same forward that
      gives grad_x CE for x*; explaining x* would ask the student to explain an image it never sees.
    - Teacher maps are cached per sample only when `cache_maps` (no augmentation) and the
      oracle is off; see core.signals.maps.
    - With `explanation.target == "autoencoder"` the target maps come from the fitted
      XDistillation autoencoder on x; the class explained is still the teacher's top-1.
    - The student's map comes from its training forward (train mode, BatchNorm on batch
      statistics), so it costs no extra forward; the evaluation explains it in eval mode.
    """

    student: nn.Module  # the network being trained: the student, or the teacher in its own stage (CE only)
    terms: WeightedSum
    data: DataBundle
    device: torch.device
    teacher: nn.Module | None = None
    explanation: ExplanationSpec | None = None
    oracle_gamma: float | None = None
    autoencoder: nn.Module | None = None
    cache_maps: bool = False
    signals: TeacherSignals | None = field(init=False, default=None)
    forward_model: nn.Module | None = field(init=False, default=None)  # the student's DDP wrapper on several ranks

    def __post_init__(self) -> None:
        needs = self.terms.needs
        if TARGET_MAPS in needs and self.explanation is None:
            raise ValueError("an explanation term needs the explanation settings")
        if needs and self.teacher is None:
            raise ValueError(f"terms {sorted(needs)} need a teacher")
        self.student_tap = FeatureTap(explained_layer(self.student))
        # An explainer that reads another module than the explained layer (`Explainer.layer`) taps it too.
        source = map_source(self.student, self.explanation.explainer) if self.explanation is not None else None
        self.student_map_tap = FeatureTap(source) if source is not None else None
        if self.teacher is not None:
            self.signals = build_signals(
                self.teacher, explained_layer(self.teacher),
                explanation=self.explanation if TARGET_MAPS in needs else None,
                oracle_gamma=self.oracle_gamma, autoencoder=self.autoencoder,
                cache_size=len(self.data.train) if self.cache_maps else None,
            )

    def close(self) -> None:
        """Remove the forward hooks, leaving the models as they were."""
        self.student_tap.remove()
        if self.student_map_tap is not None:
            self.student_map_tap.remove()
        if self.signals is not None:
            self.signals.close()

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.terms.parameters())

    def frozen_models(self) -> list[nn.Module]:
        return [model for model in (self.teacher, self.autoencoder) if model is not None]

    def state_dict(self) -> dict[str, Any]:
        return {"terms": self.terms.state_dict(), "signals": self.signals.state_dict() if self.signals else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.terms.load_state_dict(state["terms"])
        if self.signals is not None:
            self.signals.load_state_dict(state.get("signals", {}), self.device)

    def use_forward(self, module: nn.Module | None) -> None:
        self.forward_model = module

    def merge_ranks(self) -> None:
        if self.signals is not None:
            self.signals.merge_ranks()

    def held_out(self) -> dict[str, float]:
        logits = predict_logits(self.student, self.data.test_x, self.device)
        return {"test_accuracy": float((logits.argmax(dim=1) == self.data.test_y).float().mean())}

    def step(self, batch: Batch) -> StepOutput:
        wanted = self.terms.needs_at(batch.step)
        teacher = self.signals.compute(batch, wanted) if self.signals is not None and wanted else {}
        explaining = STUDENT_MAPS in wanted and self.explanation is not None
        input_maps = explaining and get_explainer(self.explanation.explainer).needs_input_grad  # type: ignore[union-attr]
        student_inputs = batch.x.detach().requires_grad_() if input_maps else batch.x
        student_logits = (self.forward_model or self.student)(student_inputs)
        student_features = self.student_tap.take()
        explained = self.student_map_tap.take() if self.student_map_tap is not None else student_features
        student_maps = None
        if explaining:
            assert self.explanation is not None
            forward = ForwardPass(self.student, student_inputs, student_logits, explained)
            student_maps = explanation_maps(self.explanation.explainer, forward, teacher[TARGET_CLASSES], True)
        context = BatchContext(
            labels=batch.y,
            student_logits=student_logits,
            student_features=student_features if "student_features" in wanted else None,
            teacher_logits=teacher.get(TEACHER_LOGITS),
            teacher_features=teacher.get(TEACHER_FEATURES),
            student_maps=student_maps,
            target_maps=teacher.get(TARGET_MAPS) if explaining else None,
            epoch=batch.epoch,
        )
        loss, values = self.terms(context)
        return StepOutput(loss, values, student_logits)
