"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017) at the explained layer.

Turned on by `{"loss": {"at": 1000.0}}` (with CE: `{"method": "at"}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.explain import resize_to_larger
from core.terms.base import STUDENT_FEATURES, TEACHER_FEATURES, BatchContext, Term
from core.terms.registry import TermUnit, register


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Activation-based spatial attention of Zagoruyko & Komodakis: mean_c A_c^2, (N, 1, h, w)."""
    return features.pow(2).mean(dim=1, keepdim=True)


class AttentionTransfer(Term):
    """AT at the last conv stage: q = normalize(flatten(mean_c A_c^2)), loss = mean((q_s - q_t)^2).

    q has unit L2 norm per sample. The mean over the batch and the h*w entries is the
    reference code's, whose usual coefficient beta = 1000 is the `at` preset's weight. Maps of
    different resolution are bilinearly resized to the larger before normalising.
    """

    name = "at"
    needs = frozenset({STUDENT_FEATURES, TEACHER_FEATURES})

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.student_features is not None and ctx.teacher_features is not None
        student_att, teacher_att = resize_to_larger(
            attention_map(ctx.student_features), attention_map(ctx.teacher_features)
        )
        student_q = F.normalize(student_att.flatten(1), dim=1)
        teacher_q = F.normalize(teacher_att.flatten(1), dim=1)
        return (student_q - teacher_q).pow(2).mean()


UNIT = register(TermUnit(
    name="at",
    fields={"at": (float, Field(0.0, ge=0.0, description="Attention transfer (Zagoruyko & Komodakis) at the "
                                "last stage."))},
    weight=lambda loss: loss.at,
    factory=lambda loss, sizes: AttentionTransfer(),
    presets={"at": {"ce": 1.0, "at": 1000.0}},
    new=False,  # part of the spec before the registry: always in a spec's identity
))
