"""Teacher logits (on x, or on the oracle input x*) and teacher features at the explained layer."""

from __future__ import annotations

import torch

from core.signals.base import GRAPH, Batch, Provider, TeacherForward, TeacherPass
from core.terms.base import TEACHER_FEATURES, TEACHER_LOGITS
from core.terms.oracle import oracle_inputs


class TeacherLogits(Provider):
    """The teacher's logits on x, detached: KD's (and DKD's, DIST's) soft targets."""

    provides = (TEACHER_LOGITS,)

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        assert teacher is not None
        return {TEACHER_LOGITS: teacher.logits.detach()}


class OracleTeacherLogits(Provider):
    """The teacher's logits on x* = x - gamma * |x| * grad_x CE(T(x), y) (Lee et al., BMVC 2023).

    grad_x comes from the shared teacher forward on x (which therefore keeps its graph); x*
    costs one more teacher forward, without graph. Only the soft targets move to x*:
    features and maps stay on x, the student's input.
    """

    provides = (TEACHER_LOGITS,)

    def __init__(self, forward: TeacherForward, gamma: float) -> None:
        self.forward, self.gamma = forward, gamma

    def plan(self, batch: Batch) -> int:
        return GRAPH

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        assert teacher is not None and teacher.graph
        oracle_x = oracle_inputs(teacher.inputs, teacher.logits, batch.y, self.gamma)
        return {TEACHER_LOGITS: self.forward.logits(oracle_x)}


class TeacherFeatures(Provider):
    """The teacher's explained-layer output on x, detached (AT, FitNet)."""

    provides = (TEACHER_FEATURES,)

    def compute(self, batch: Batch, teacher: TeacherPass | None) -> dict[str, torch.Tensor]:
        assert teacher is not None
        return {TEACHER_FEATURES: teacher.features.detach()}
