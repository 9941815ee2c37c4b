"""Oracle teacher input (Lee et al., BMVC 2023): a setting of the teacher's logits, not a loss of its own.

The teacher's soft targets are taken on x* = x - gamma * |x| * grad_x CE(T(x), y), one
signed-gradient-like step that lowers the teacher's loss; the student always sees x.
The `teacher_logits` signal (core.signals) applies it for every term that reads them.

Turned on by `{"loss": {"kd": 1.0, "oracle_gamma": 1.0}}` (`{"method": "oracle"}`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from core.terms.registry import TermUnit, register


def oracle_inputs(inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """x* = x - gamma * |x| * grad_x CE(T(x), y), detached.

    The CE is summed over the batch (each sample's gradient is its own, whatever the batch
    size). `inputs` must have required grad in the forward that made `logits`; the graph is
    kept for other readers of the same forward.
    """
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), inputs, retain_graph=True)
    return (inputs - gamma * inputs.abs() * grad).detach()


UNIT = register(TermUnit(
    name="oracle",
    fields={
        "oracle_gamma": (
            float | None,
            Field(None, ge=0.0, description="Teacher sees x* = x - gamma*|x|*grad_x CE(T(x), y); null = off."),
        )
    },
    presets={"oracle": {"ce": 1.0, "kd": 1.0, "oracle_gamma": 1.0}},
    new=False,  # part of the spec before the registry: always in a spec's identity
))
