"""DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

Instead of matching the teacher's probabilities exactly (KL), the student only has to
correlate with them: per sample across classes (inter-class relation) and per class across
the batch (intra-class relation). A linear relation is enough, which tolerates the gap to a
much stronger teacher.

Turned on by `{"loss": {"dist": {"weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0}}}`
(with CE: `{"method": "dist"}`); an explanation term may be added on top.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.strict import StrictModel
from core.terms.base import TEACHER_LOGITS, BatchContext, Term
from core.terms.registry import TermUnit, register


class DISTSpec(StrictModel):
    """DIST's settings; the defaults are the paper's CIFAR-100 values (beta = gamma = 2, T = 4)."""

    weight: float = Field(0.0, ge=0.0, description="Coefficient of the DIST term (0 = off).")
    beta: float = Field(2.0, ge=0.0, description="Weight of the inter-class relation (per sample, across classes).")
    gamma: float = Field(2.0, ge=0.0, description="Weight of the intra-class relation (per class, across the batch).")
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature T.")


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`, (N,): cosine of the centred rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(Term):
    """T^2 * (beta * (1 - mean_i rho(Y_s[i,:], Y_t[i,:])) + gamma * (1 - mean_c rho(Y_s[:,c], Y_t[:,c]))).

    Y = softmax(z / T) per sample, (N, C); rho is the Pearson correlation. The first part is
    the inter-class relation (each sample's class ranking), the second the intra-class
    relation (each class's scores across the batch), as in the authors' code.
    """

    name = "dist"
    needs = frozenset({TEACHER_LOGITS})

    def __init__(self, beta: float, gamma: float, temperature: float) -> None:
        super().__init__()
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.teacher_logits is not None
        t = self.temperature
        student = F.softmax(ctx.student_logits / t, dim=1)
        teacher = F.softmax(ctx.teacher_logits / t, dim=1)
        inter = 1.0 - pearson_rows(student, teacher).mean()
        intra = 1.0 - pearson_rows(student.t(), teacher.t()).mean()
        return t * t * (self.beta * inter + self.gamma * intra)


UNIT = register(TermUnit(
    name="dist",
    fields={"dist": (DISTSpec, Field(default_factory=DISTSpec, description="DIST (Huang et al., NeurIPS 2022)."))},
    weight=lambda loss: loss.dist.weight,
    factory=lambda loss, sizes: DIST(loss.dist.beta, loss.dist.gamma, loss.dist.temperature),
    presets={"dist": {"ce": 1.0, "dist": {"weight": 1.0}}},
))
