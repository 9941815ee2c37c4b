"""Hinton knowledge distillation: the student matches the teacher's softened class probabilities.

Turned on by `{"loss": {"kd": 1.0, "temperature": 4.0}}` (with CE: `{"method": "kd"}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.terms.base import TEACHER_LOGITS, BatchContext, Term
from core.terms.registry import TermUnit, register


class KnowledgeDistillation(Term):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean (Hinton, Vinyals & Dean, 2015).

    The T^2 factor keeps the gradient scale of the soft targets independent of T.
    """

    name = "kd"
    needs = frozenset({TEACHER_LOGITS})

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.teacher_logits is not None
        t = self.temperature
        student_log_probs = F.log_softmax(ctx.student_logits / t, dim=1)
        teacher_log_probs = F.log_softmax(ctx.teacher_logits / t, dim=1)
        return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * t * t


UNIT = register(TermUnit(
    name="kd",
    fields={
        "kd": (float, Field(0.0, ge=0.0, description="Hinton KD, T^2 * KL(teacher || student).")),
        "temperature": (float, Field(4.0, gt=0.0, description="The KD temperature T.")),
    },
    weight=lambda loss: loss.kd,
    factory=lambda loss, sizes: KnowledgeDistillation(loss.temperature),
    presets={"kd": {"ce": 1.0, "kd": 1.0}},
    new=False,  # part of the spec before the registry: always in a spec's identity
))
