"""Learning-rate schedules, warm-up and label smoothing: torch's rates step for step, resumed bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, MultiStepLR, StepLR

from core.data import DataBundle
from core.errors import JobCancelled
from core.models import build_model
from core.resume import resume_digest
from core.run import run_distillation
from core.spec import JobSpec
from core.spec.sweep import SweepError, expand
from core.terms import BatchContext, CrossEntropy, cross_entropy_only, smooth_labels
from core.train.callbacks import NullCallbacks, Progress
from core.train.loop import DistillationObjective, OptimConfig, train
from core.train.schedule import make_scheduler
from tests.core.test_resume import InterruptAfterEpoch

CPU = torch.device("cpu")
LR = 0.05


def _optimizer() -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR, momentum=0.9)


def _rates(scheduler: torch.optim.lr_scheduler.LRScheduler | None, optimizer: torch.optim.Optimizer,
           steps: int) -> list[float]:
    """The rate each of `steps` optimiser steps runs at (read before the step, scheduler stepped after)."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


def _torch_reference(name: str, optimizer: torch.optim.Optimizer, steps: int, warmup_epochs: int):
    """The same settings written directly with torch.optim.lr_scheduler, epochs turned into steps by hand."""
    chain = []
    if warmup_epochs:
        n = warmup_epochs * steps
        chain.append(LinearLR(optimizer, start_factor=1 / (n + 1), end_factor=1.0, total_iters=n))
    if name == "multistep":
        chain.append(MultiStepLR(optimizer, milestones=[2 * steps, 4 * steps], gamma=0.1))
    elif name == "step":
        chain.append(StepLR(optimizer, step_size=2 * steps, gamma=0.5))
    elif name == "cosine":
        chain.append(CosineAnnealingLR(optimizer, T_max=6 * steps))
    return chain[0] if len(chain) == 1 else ChainedScheduler(chain, optimizer=optimizer) if chain else None


def _config(name: str, warmup_epochs: int, **extra: object) -> OptimConfig:
    settings: dict = {"multistep": {"milestones": (2, 4), "gamma": 0.1}, "step": {"step_size": 2, "gamma": 0.5}}
    return OptimConfig(epochs=6, batch_size=32, lr=LR, scheduler=name, warmup_epochs=warmup_epochs,
                       **settings.get(name, {}), **extra)


@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
@pytest.mark.parametrize("name", ["multistep", "step", "cosine", "none"])
def test_every_step_runs_at_the_rate_torch_gives_for_the_same_settings(name: str, warmup_epochs: int) -> None:
    steps = 5
    ours_optimizer, torch_optimizer = _optimizer(), _optimizer()
    ours = _rates(make_scheduler(ours_optimizer, _config(name, warmup_epochs), steps), ours_optimizer, 6 * steps)
    expected = _rates(_torch_reference(name, torch_optimizer, steps, warmup_epochs), torch_optimizer, 6 * steps)
    assert ours == expected  # exact, step for step


def test_warm_up_and_multistep_give_the_rates_written_out_by_hand() -> None:
    """Not only the same as torch: the rates the recipe means (warm-up from lr/(n+1) to lr, then x0.1 per milestone)."""
    steps, optimizer = 4, _optimizer()
    rates = _rates(make_scheduler(optimizer, _config("multistep", 1), steps), optimizer, 6 * steps)
    for step, rate in enumerate(rates):
        warm = (step + 1) / (steps + 1) if step < steps else 1.0
        decay = 0.1 ** sum(step >= milestone * steps for milestone in (2, 4))
        assert rate == pytest.approx(LR * warm * decay, rel=1e-12), step


class _CancelAfter(NullCallbacks):
    def __init__(self, steps: int) -> None:
        self.steps, self.seen = steps, 0

    def on_progress(self, progress: Progress) -> None:
        self.seen += 0 < progress.step <= progress.total_steps and "test_accuracy" not in progress.metrics

    def should_cancel(self) -> bool:
        return self.seen >= self.steps


def _teacher_run(data: DataBundle, config: OptimConfig, checkpoint: Path | None = None,
                 callbacks: NullCallbacks | None = None) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = build_model("cnn", data.num_classes, data.in_channels)
    objective = DistillationObjective(model, cross_entropy_only(), data, CPU)
    history = train(model, objective, data.train_x, data.train_y, config, stage="training_teacher", device=CPU,
                    checkpoint_path=checkpoint, callbacks=callbacks)
    return model, history


def test_resuming_in_the_middle_of_the_warm_up_is_bit_identical(digits16: DataBundle, tmp_path: Path) -> None:
    config = OptimConfig(epochs=4, batch_size=32, lr=LR, scheduler="multistep", milestones=(3,), gamma=0.1,
                         warmup_epochs=2)
    steps = -(-len(digits16.train_x) // 32)
    checkpoint = tmp_path / "training_teacher.pt"
    with pytest.raises(JobCancelled):  # stops in epoch 2, inside the two warm-up epochs
        _teacher_run(digits16, config, checkpoint, _CancelAfter(steps + 2))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed, resumed_history = _teacher_run(digits16, config, checkpoint)
    straight, straight_history = _teacher_run(digits16, config)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [e["lr"] for e in resumed_history] == [e["lr"] for e in straight_history]
    assert [e["loss"] for e in resumed_history] == [e["loss"] for e in straight_history]
    # the loop's rate at each epoch end is the one torch gives after that many steps
    optimizer = _optimizer()
    reference = ChainedScheduler([
        LinearLR(optimizer, start_factor=1 / (2 * steps + 1), end_factor=1.0, total_iters=2 * steps),
        MultiStepLR(optimizer, milestones=[3 * steps], gamma=0.1)], optimizer=optimizer)
    rates = _rates(reference, optimizer, 4 * steps) + [optimizer.param_groups[0]["lr"]]
    assert [e["lr"] for e in straight_history] == [rates[(epoch + 1) * steps] for epoch in range(4)]


def test_label_smoothing_is_torchs_on_the_students_cross_entropy() -> None:
    logits, labels = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 5
    ctx = BatchContext(labels=labels, student_logits=logits)
    terms = smooth_labels(cross_entropy_only(), 0.1)
    assert terms.terms[0].forward(ctx) == F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert CrossEntropy().forward(ctx) == F.cross_entropy(logits, labels)
    assert terms.terms[0].forward(ctx) != CrossEntropy().forward(ctx)


def _spec(**training: object) -> JobSpec:
    return JobSpec.model_validate({"dataset": {"name": "digits"}, "training": training})


@pytest.mark.parametrize(("training", "field"), [
    ({"scheduler": "multistep"}, "milestones"),
    ({"scheduler": "multistep", "milestones": [5, 5]}, "milestones"),
    ({"milestones": [5]}, "milestones"),
    ({"scheduler": "step"}, "step_size"),
    ({"scheduler": "cosine", "step_size": 3}, "step_size"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_schedule_settings_that_would_do_nothing_or_cannot_work_name_their_field(training: dict, field: str) -> None:
    with pytest.raises(ValueError) as error:
        _spec(**training)
    assert error.value.errors()[0]["loc"] == ("training", field)  # type: ignore[attr-defined]


def test_new_settings_at_their_defaults_keep_a_runs_identity_and_change_it_otherwise() -> None:
    plain = _spec()
    explicit = _spec(gamma=0.1, warmup_epochs=0, label_smoothing=0.0, milestones=[])
    assert resume_digest(plain) == resume_digest(explicit)
    assert resume_digest(_spec(warmup_epochs=1)) != resume_digest(plain)
    assert resume_digest(_spec(label_smoothing=0.1)) != resume_digest(plain)


def test_a_sweep_grid_varies_schedules_warm_up_and_label_smoothing() -> None:
    base = {"dataset": {"name": "digits"}, "training": {"scheduler": "multistep", "milestones": [2]}}
    grid = {"training.milestones": [[2], [1, 3]], "training.warmup_epochs": [0, 1],
            "training.label_smoothing": [0.0, 0.1]}
    children = expand(base, grid, max_children=16)
    assert len(children) == 8
    assert {(tuple(c.spec["training"]["milestones"]), c.spec["training"]["warmup_epochs"],
             c.spec["training"]["label_smoothing"]) for c in children} == {
        (m, w, s) for m in ((2,), (1, 3)) for w in (0, 1) for s in (0.0, 0.1)}
    with pytest.raises(SweepError) as error:
        expand(base, {"training.milestones": [[2], [3, 1]]}, max_children=4)
    assert error.value.field == "grid.training.milestones" and "combination 1" in error.value.message
    assert math.isclose(children[0].spec["training"]["gamma"], 0.1)


def test_a_job_interrupted_in_its_warm_up_resumes_to_the_same_student(tmp_path: Path) -> None:
    """The run-level pattern of test_resume: stop after the first of two warm-up epochs, rerun the folder."""
    spec = JobSpec.model_validate({
        "name": "resume-warm-up",
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 15},
        "teacher": {"arch": "cnn", "epochs": 2},
        "student": {"arch": "resnet8"},
        "method": "kd",
        "training": {"epochs": 4, "batch_size": 32, "seed": 3, "scheduler": "multistep", "milestones": [3],
                     "warmup_epochs": 2, "label_smoothing": 0.1},
        "report": {"heatmaps": 0, "latency_runs": 1},
        "export": {"onnx": False},
    })
    straight = run_distillation(spec, tmp_path / "straight")
    with pytest.raises(JobCancelled):
        run_distillation(spec, tmp_path / "interrupted", InterruptAfterEpoch("distilling", epoch=1))
    resumed = run_distillation(spec, tmp_path / "interrupted")
    expected = load_file(str(tmp_path / "straight" / "student.safetensors"))
    actual = load_file(str(tmp_path / "interrupted" / "student.safetensors"))
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    timeless = [[{k: v for k, v in e.items() if k != "seconds"} for e in run["history"]["student"]]
                for run in (straight, resumed)]
    assert timeless[0] == timeless[1]  # epoch 0 and every epoch's losses, accuracy and rate
    rates = [e["lr"] for e in straight["history"]["student"][1:]]
    assert rates[0] < rates[1] == pytest.approx(LR) and rates[3] == pytest.approx(LR * 0.1)  # warm-up, full, decayed
