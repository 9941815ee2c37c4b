"""Cross-entropy with the labels: the supervised term of every method.

Turned on by `{"loss": {"ce": 1.0}}` (the default; alone: `{"method": "scratch"}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.terms.base import BatchContext, Term, WeightedSum
from core.terms.registry import TermUnit, register


class CrossEntropy(Term):
    """CE(S(x), y), batch mean."""

    name = "ce"

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        return F.cross_entropy(ctx.student_logits, ctx.labels)


def cross_entropy_only() -> WeightedSum:
    """The loss of teacher training."""
    return WeightedSum([(1.0, CrossEntropy())])


UNIT = register(TermUnit(
    name="ce",
    fields={"ce": (float, Field(1.0, ge=0.0, description="Cross-entropy with the labels."))},
    weight=lambda loss: loss.ce,
    factory=lambda loss, sizes: CrossEntropy(),
    presets={"scratch": {"ce": 1.0}},
    new=False,  # part of the spec before the registry: always in a spec's identity
))
