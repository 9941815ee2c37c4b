"""FitNet hint (Romero et al., ICLR 2015) at the explained layer.

Turned on by `{"loss": {"fitnet": 1.0}}` (with CE: `{"method": "fitnet"}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core.explain import resize_to_larger
from core.terms.base import STUDENT_FEATURES, TEACHER_FEATURES, BatchContext, Term
from core.terms.registry import TermUnit, register


class FitNetHint(Term):
    """MSE(r(A_s), A_t) at the last conv stage, r a trainable 1x1 convolution.

    r maps the student's channels to the teacher's; it is optimised with the student (its
    parameters are this module's, checkpointed with the objective) but is not part of the
    exported student. Spatial sizes are matched by resizing the smaller map to the larger.
    """

    name = "fitnet"
    needs = frozenset({STUDENT_FEATURES, TEACHER_FEATURES})

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.regressor = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.student_features is not None and ctx.teacher_features is not None
        hint, guided = resize_to_larger(self.regressor(ctx.student_features), ctx.teacher_features)
        return F.mse_loss(hint, guided)


UNIT = register(TermUnit(
    name="fitnet",
    fields={"fitnet": (float, Field(0.0, ge=0.0, description="FitNet hint (MSE through a 1x1 regressor) at the "
                                    "last stage."))},
    weight=lambda loss: loss.fitnet,
    factory=lambda loss, sizes: FitNetHint(sizes.student_channels, sizes.teacher_channels),
    presets={"fitnet": {"ce": 1.0, "fitnet": 1.0}},
    new=False,  # part of the spec before the registry: always in a spec's identity
))
