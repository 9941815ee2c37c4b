"""The example specs: each validates, and the published recipe says what the papers' scripts ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.spec import JobSpec
from core.train.loop import OptimConfig
from core.train.schedule import make_scheduler

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
RECIPES = [path for path in EXAMPLES if path.name.startswith("repdistiller-")]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_is_a_valid_spec_named_in_the_readme(path: Path) -> None:
    JobSpec.model_validate(json.loads(path.read_text()))
    assert f"examples/{path.name}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_the_repdistiller_recipe_is_the_published_one(path: Path) -> None:
    spec = JobSpec.model_validate(json.loads(path.read_text()))
    training = spec.training
    assert (spec.teacher.arch, spec.student.arch, spec.student.weights) == ("resnet56", "resnet20", None)
    assert (training.optimizer, training.lr, training.momentum, training.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
    assert (training.batch_size, training.epochs, spec.teacher.epochs) == (64, 240, 240)
    assert (training.scheduler, training.milestones, training.gamma, training.warmup_epochs) == (
        "multistep", [150, 180, 210], 0.1, 0)
    assert spec.dataset.augment and spec.dataset.image_size == 32 and spec.dataset.path is not None
    if spec.method == "kd":
        assert (spec.loss.ce, spec.loss.kd, spec.loss.temperature) == (0.1, 0.9, 4.0)
    else:
        dkd = spec.loss.dkd
        assert (spec.method, spec.loss.ce, dkd.weight, dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup_epochs) == (
            "dkd", 1.0, 1.0, 1.0, 2.0, 4.0, 20.0)
    # 50,000 CIFAR images at batch 64: 782 steps an epoch; the rate is 0.05 until epoch 150, then x0.1 per milestone
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training.lr)
    scheduler = make_scheduler(optimizer, OptimConfig.from_training(training, training.epochs), 782)
    rates = {}
    for step in range(240 * 782):
        if step % 782 == 0:
            rates[step // 782] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    assert rates[149] == 0.05 and rates[150] == pytest.approx(0.005) and rates[180] == pytest.approx(5e-4)
    assert rates[210] == pytest.approx(5e-5) and rates[239] == rates[210]
