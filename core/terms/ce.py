"""Cross-entropy with the labels: the supervised term of every method.

Turned on by `{"loss": {"ce": 1.0}}` (the default; alone: `{"method": "scratch"}`). The student's
term takes `{"training": {"label_smoothing": 0.1}}`; the teacher trained by a job does not, since a
label-smoothed teacher's soft targets carry less to distil (Mueller et al., 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.terms.base import BatchContext, Term, WeightedSum
from core.terms.registry import TermUnit, register


class CrossEntropy(Term):
    """CE(S(x), y), batch mean, with torch's label smoothing."""

    name = "ce"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        return F.cross_entropy(ctx.student_logits, ctx.labels, label_smoothing=self.label_smoothing)


def smooth_labels(terms: WeightedSum, label_smoothing: float) -> WeightedSum:
    """`terms` with label smoothing set on its cross-entropy term (the `training` block's setting, not `loss`'s)."""
    for term in terms.terms:
        if isinstance(term, CrossEntropy):
            term.label_smoothing = float(label_smoothing)
    return terms


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
