"""The CIFAR ResNets' in-place ReLUs and residual adds change nothing but memory traffic.

Each test runs one model twice from the same weights, in place and out of place
(`set_inplace(model, False)`, the reference forward), and compares bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core.explain import FeatureTap, gradcam_maps
from core.models import build_model, explained_layer
from core.models.cifar import set_inplace


def _pair(arch: str = "resnet8") -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    inplace = build_model(arch, 10, 3)
    reference = set_inplace(copy.deepcopy(inplace), False)
    return inplace, reference


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", ["resnet8", "resnet20"])
def test_inplace_resnet_gives_the_same_logits_and_gradients(arch: str) -> None:
    x, y = _batch()
    grads, logits = [], []
    for model in _pair(arch):
        out = model.train()(x)
        F.cross_entropy(out, y).backward()
        logits.append(out.detach())
        grads.append(_grads(model))
    assert torch.equal(logits[0], logits[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_inplace_resnet_keeps_the_double_backward_of_the_explanation_term() -> None:
    """Grad-CAM with create_graph on the explained layer, then backward through the map: autograd would raise
    if an in-place op had overwritten a tensor it saved."""
    x, y = _batch()
    maps, grads = [], []
    for model in _pair():
        tap = FeatureTap(explained_layer(model))
        logits = model.train()(x)
        student_maps = gradcam_maps(logits, tap.take(), y, create_graph=True)
        loss = F.cross_entropy(logits, y) + (1 - F.cosine_similarity(student_maps.flatten(1), torch.ones(8, 16))).mean()
        loss.backward()
        tap.remove()
        maps.append(student_maps.detach())
        grads.append(_grads(model))
    assert torch.equal(maps[0], maps[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_tap_inside_a_block_sees_that_layer_not_the_block_output() -> None:
    """A hook on a batch norm whose output the block would overwrite keeps its own value (no in-place there)."""
    x, _ = _batch()
    seen = []
    for model in _pair():
        tap = FeatureTap(model.layer3[0].bn2)
        model.eval()(x)
        seen.append(tap.take())
        tap.remove()
    assert torch.equal(seen[0], seen[1])
    assert (seen[0] < 0).any()  # a raw batch-norm output, not overwritten by the residual add and ReLU


def test_full_backward_hooks_on_a_block_layer_still_work() -> None:
    x, y = _batch()
    model, _ = _pair()
    grads_seen: list[torch.Tensor] = []
    handle = model.layer2[0].bn1.register_full_backward_hook(lambda m, gi, go: grads_seen.append(go[0]))
    F.cross_entropy(model.train()(x), y).backward()
    handle.remove()
    assert len(grads_seen) == 1 and grads_seen[0].abs().sum() > 0
