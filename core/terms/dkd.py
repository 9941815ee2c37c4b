"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022).

KD's loss splits into a target-class part (does the student share the teacher's confidence
in the label?) and a non-target part (does it rank the other classes like the teacher?);
DKD weighs them separately, so the "dark knowledge" of the non-target classes is not
suppressed when the teacher is confident.

The preset `{"method": "dkd"}` is CE plus this term at weight 1; set its parts with
`{"loss": {"dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0}}}`, and add an
explanation term on top for DKD + XAI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.strict import StrictModel
from core.terms.base import TEACHER_LOGITS, BatchContext, Term
from core.terms.registry import TermUnit, register


class DKDSpec(StrictModel):
    """DKD's settings; the paper's CIFAR-100 values are the defaults (alpha 1, beta 8, T 4)."""

    weight: float = Field(0.0, ge=0.0, description="Coefficient of the DKD term (0 = off).")
    alpha: float = Field(1.0, ge=0.0, description="Weight of TCKD, the target-class part.")
    beta: float = Field(8.0, ge=0.0, description="Weight of NCKD, the non-target-class part.")
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature T of both parts.")
    warmup_epochs: float = Field(
        1.0, ge=0.0, description="The term ramps linearly from 0 to full over this many epochs (paper: 20 of 240); "
        "0 = no warm-up."
    )


def _binary_log_probs(scaled: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] per sample, (N, 2), from logits/T; stable (log-sum-exp, no log of a difference)."""
    log_all = torch.logsumexp(scaled, dim=1)
    log_target = scaled.masked_select(target_mask) - log_all
    log_rest = torch.logsumexp(scaled.masked_fill(target_mask, float("-inf")), dim=1) - log_all
    return torch.stack([log_target, log_rest], dim=1)


def _non_target_log_probs(scaled: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the C-1 non-target classes only, (N, C-1)."""
    rows, classes = scaled.shape
    return F.log_softmax(scaled.masked_select(~target_mask).view(rows, classes - 1), dim=1)


class DecoupledKD(Term):
    """w(e) * T^2 * (alpha * TCKD + beta * NCKD), batch mean.

    With p = softmax(z / T) for the teacher (t) and the student (s) and y the label:
    - TCKD = KL(b_t || b_s), b = [p_y, 1 - p_y], the binary target-vs-rest distribution;
    - NCKD = KL(p^_t || p^_s), p^ = softmax over the non-target logits z_{c != y} / T;
    - w(e) = min(1, e / warmup_epochs), e = epochs done (fractional), the paper's warm-up.
    Hinton's KD equals TCKD + (1 - p_y^t) * NCKD; DKD frees NCKD from that factor.
    """

    name = "dkd"
    needs = frozenset({TEACHER_LOGITS})

    def __init__(self, alpha: float, beta: float, temperature: float, warmup_epochs: float) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature, self.warmup_epochs = alpha, beta, temperature, warmup_epochs

    def warmup(self, epoch: float) -> float:
        return 1.0 if self.warmup_epochs <= 0 else min(1.0, epoch / self.warmup_epochs)

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.teacher_logits is not None
        t = self.temperature
        student, teacher = ctx.student_logits / t, ctx.teacher_logits / t
        target_mask = F.one_hot(ctx.labels, student.shape[1]).bool()
        tckd = F.kl_div(_binary_log_probs(student, target_mask), _binary_log_probs(teacher, target_mask),
                        reduction="batchmean", log_target=True)
        nckd = F.kl_div(_non_target_log_probs(student, target_mask), _non_target_log_probs(teacher, target_mask),
                        reduction="batchmean", log_target=True)
        return self.warmup(ctx.epoch) * t * t * (self.alpha * tckd + self.beta * nckd)


UNIT = register(TermUnit(
    name="dkd",
    fields={"dkd": (DKDSpec, Field(default_factory=DKDSpec, description="Decoupled KD (Zhao et al., CVPR 2022)."))},
    weight=lambda loss: loss.dkd.weight,
    factory=lambda loss, sizes: DecoupledKD(loss.dkd.alpha, loss.dkd.beta, loss.dkd.temperature,
                                            loss.dkd.warmup_epochs),
    presets={"dkd": {"ce": 1.0, "dkd": {"weight": 1.0}}},
))
