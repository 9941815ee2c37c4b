"""What every loss term shares: the per-batch context it reads, the `Term` module, the weighted sum.

A term is a small `nn.Module` that turns a `BatchContext` into a scalar. It says which
signals it reads (`needs`, names from `SIGNALS`), so the objective computes only those,
once per batch, however many terms read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The signals a term may ask for. Teacher-side ones come from core.signals providers;
# student-side ones from the student's own training forward.
TEACHER_LOGITS = "teacher_logits"  # teacher on x~ (x, or x* with the oracle), no graph
TEACHER_FEATURES = "teacher_features"  # teacher's explained layer on x, no graph
TARGET_MAPS = "target_maps"  # teacher's (or the autoencoder's) maps of the teacher's top-1 class, no graph
TARGET_CLASSES = "target_classes"  # the class the maps explain (teacher top-1 on x); comes with TARGET_MAPS
STUDENT_FEATURES = "student_features"  # student's explained layer on x, with graph
STUDENT_MAPS = "student_maps"  # student's maps of the teacher's top-1 class, with graph
SIGNALS = frozenset({TEACHER_LOGITS, TEACHER_FEATURES, TARGET_MAPS, STUDENT_FEATURES, STUDENT_MAPS})


@dataclass
class BatchContext:
    """What one training step computed; `None` where no active term asked for it."""

    labels: torch.Tensor  # (N,)
    student_logits: torch.Tensor  # (N, classes), with graph
    student_features: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    student_maps: torch.Tensor | None = None  # (N, 1, h, w); only on guided steps
    target_maps: torch.Tensor | None = None
    epoch: float = 1.0  # epochs done at the end of this step (fractional): what warm-ups read


class Term(nn.Module):
    """One named loss unit; subclasses list the signals they read in `needs`."""

    name = "term"
    needs: frozenset[str] = frozenset()

    def needs_at(self, step: int) -> frozenset[str]:
        """The signals this term reads on global step `step`; empty = it sits this step out."""
        return self.needs

    def active(self, ctx: BatchContext) -> bool:
        """False on steps where the term has nothing to compare (e.g. a non-guided step)."""
        return all(getattr(ctx, signal) is not None for signal in self.needs)


class WeightedSum(nn.Module):
    """L = sum_k w_k * term_k(ctx), over the terms with w_k > 0 that are active on this step.

    Returns the total and each active term's unweighted value (detached), for the history.
    """

    def __init__(self, weighted_terms: list[tuple[float, Term]]) -> None:
        super().__init__()
        if not weighted_terms:
            raise ValueError("the loss has no term with a positive weight")
        self.terms = nn.ModuleList(term for _, term in weighted_terms)
        self.weights = [float(weight) for weight, _ in weighted_terms]

    @property
    def needs(self) -> frozenset[str]:
        """Every signal some term may read on some step."""
        return frozenset().union(*(term.needs for term in self.terms))

    def needs_at(self, step: int) -> frozenset[str]:
        """The signals the terms read on global step `step`: what the objective computes for it."""
        return frozenset().union(*(term.needs_at(step) for term in self.terms))

    @property
    def names(self) -> list[str]:
        return [term.name for term in self.terms]

    def forward(self, ctx: BatchContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        for weight, term in zip(self.weights, self.terms):
            if not term.active(ctx):
                continue
            value = term(ctx)
            values[term.name] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None, "no active term"
        return total, values
