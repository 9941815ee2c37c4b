"""Oracle teacher inputs (Lee et al., BMVC 2023): x* must make the teacher more right about y."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.data import DataBundle
from core.spec import PRESETS
from core.terms import oracle_inputs


def _ce_before_and_after(
    teacher: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float
) -> tuple[float, float]:
    inputs = x.clone().requires_grad_()
    logits = teacher(inputs)
    oracle_x = oracle_inputs(inputs, logits, y, gamma)
    with torch.no_grad():
        return float(F.cross_entropy(logits, y)), float(F.cross_entropy(teacher(oracle_x), y))


def test_oracle_inputs_lower_the_teachers_cross_entropy_with_the_preset_gamma(
    trained_teacher: torch.nn.Module, digits16: DataBundle
) -> None:
    gamma = PRESETS["oracle"]["oracle_gamma"]
    for start in range(0, 128, 64):  # training batches and held-out batches alike
        for x, y in ((digits16.train_x, digits16.train_y), (digits16.test_x, digits16.test_y)):
            before, after = _ce_before_and_after(trained_teacher, x[start : start + 64], y[start : start + 64], gamma)
            assert after < before


def test_oracle_step_does_not_depend_on_the_batch_size(trained_teacher: torch.nn.Module, digits16: DataBundle) -> None:
    """The CE is summed, so each sample's x* is its own, whatever batch it is in."""
    x, y = digits16.test_x[:32], digits16.test_y[:32]
    whole = oracle_inputs(xi := x.clone().requires_grad_(), trained_teacher(xi), y, 1.0)
    first = oracle_inputs(xf := x[:8].clone().requires_grad_(), trained_teacher(xf), y[:8], 1.0)
    torch.testing.assert_close(whole[:8], first, atol=1e-6, rtol=1e-5)


def test_oracle_with_zero_gamma_is_the_identity(trained_teacher: torch.nn.Module, digits16: DataBundle) -> None:
    x, y = digits16.test_x[:8], digits16.test_y[:8]
    inputs = x.clone().requires_grad_()
    assert torch.equal(oracle_inputs(inputs, trained_teacher(inputs), y, 0.0), x)
