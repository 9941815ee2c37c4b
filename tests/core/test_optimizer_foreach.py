"""The multi-tensor (foreach) optimisers the trainer builds give the per-tensor loop's weights bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core.models import build_model
from core.train.loop import OptimConfig, make_optimizer


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_foreach_optimizer_matches_the_per_tensor_loop(optimizer: str) -> None:
    torch.manual_seed(0)
    models = [build_model("resnet8", 10, 3)]
    models.append(copy.deepcopy(models[0]))
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator))
               for _ in range(3)]
    for model, foreach in zip(models, (True, False)):
        config = OptimConfig(epochs=1, batch_size=8, optimizer=optimizer, lr=0.01, weight_decay=5e-4, foreach=foreach)
        opt = make_optimizer(list(model.parameters()), config)
        assert opt.param_groups[0]["foreach"] is foreach
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model.train()(x), y).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
