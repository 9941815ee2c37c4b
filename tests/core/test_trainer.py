"""The training loop and the distillation objective: caching, determinism, checkpoints, callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import core.train.checkpoint as checkpoint_module
import core.signals.maps as maps_module
from core.train.callbacks import NullCallbacks, Progress
from core.train.checkpoint import load_checkpoint
from core.data import DataBundle
from core.errors import JobCancelled
from core.models import build_model
from core.signals import AutoencoderMaps, Batch, CachedTeacherMaps, LiveTeacherMaps, OracleTeacherLogits
from core.spec import JobSpec
from core.terms import build_terms, cross_entropy_only
from core.train.loop import DistillationObjective, OptimConfig, train
from core.train.autoencoder import autoencoder_objective

CPU = torch.device("cpu")


class Recorder(NullCallbacks):
    """Keeps every report; cancels once `cancel_after_steps` steps have been reported."""

    def __init__(self, cancel_after_steps: int | None = None) -> None:
        self.reports: list[Progress] = []
        self.cancel_after_steps = cancel_after_steps

    def on_progress(self, progress: Progress) -> None:
        self.reports.append(progress)

    def should_cancel(self) -> bool:
        steps = sum(1 for report in self.reports if report.step > 0 and "test_accuracy" not in report.metrics)
        return self.cancel_after_steps is not None and steps >= self.cancel_after_steps


def _loss(method: str, **loss: object):
    return JobSpec.model_validate({"dataset": {"name": "digits"}, "method": method, "loss": loss}).loss


def _distill(
    data: DataBundle,
    teacher: torch.nn.Module,
    method: str = "e2kd",
    *,
    epochs: int = 2,
    cache: bool = True,
    checkpoint: Path | None = None,
    callbacks: Recorder | None = None,
    seed: int = 0,
    **loss: object,
) -> tuple[torch.nn.Module, list[dict], DistillationObjective]:
    spec_loss = _loss(method, **loss)
    torch.manual_seed(seed)
    student = build_model("cnn", data.num_classes, data.in_channels)
    terms = build_terms(spec_loss, 128, 128)
    objective = DistillationObjective(
        student, terms, data, CPU, teacher=teacher,
        explanation=spec_loss.explanation if spec_loss.explanation.weight > 0 else None,
        oracle_gamma=spec_loss.oracle_gamma, cache_maps=cache,
    )
    history = train(
        student, objective, data.train_x, data.train_y, OptimConfig(epochs=epochs, batch_size=32, seed=seed),
        stage="distilling", device=CPU, checkpoint_path=checkpoint, callbacks=callbacks,
    )
    objective.close()
    return student, history, objective


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_cached_teacher_maps_give_the_same_first_epoch_losses_and_skip_recomputation(
    digits16: DataBundle, trained_teacher: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"teacher_maps": 0}
    real = maps_module.explanation_maps

    def counting(explainer, forward, target, create_graph=False):  # spy: calls the real one
        calls["teacher_maps"] += not create_graph
        return real(explainer, forward, target, create_graph)

    monkeypatch.setattr(maps_module, "explanation_maps", counting)
    _, cached_history, objective = _distill(digits16, trained_teacher, cache=True)
    cached_calls, calls["teacher_maps"] = calls["teacher_maps"], 0
    _, uncached_history, _ = _distill(digits16, trained_teacher, cache=False)

    assert cached_history[0]["losses"] == uncached_history[0]["losses"]  # exactly equal
    assert cached_history[0]["loss"] == uncached_history[0]["loss"]
    for name, value in uncached_history[1]["losses"].items():
        assert cached_history[1]["losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    steps_per_epoch = -(-len(digits16.train_x) // 32)
    assert cached_calls == steps_per_epoch  # the second epoch read every map from the cache
    assert calls["teacher_maps"] == 2 * steps_per_epoch
    provider = objective.signals.provider("target_maps")
    assert isinstance(provider, CachedTeacherMaps) and bool(provider.cache.filled.all())


def test_map_cache_is_off_with_the_oracle_or_when_the_caller_disables_it(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    student = build_model("cnn", 10, 1)
    spec_loss = _loss("e2kd", oracle_gamma=1.0)
    oracle = DistillationObjective(student, build_terms(spec_loss, 128, 128), digits16, CPU, teacher=trained_teacher,
                                   explanation=spec_loss.explanation, oracle_gamma=1.0, cache_maps=True)
    assert isinstance(oracle.signals.provider("target_maps"), LiveTeacherMaps)
    assert isinstance(oracle.signals.provider("teacher_logits"), OracleTeacherLogits)
    oracle.close()
    augmenting = DistillationObjective(student, build_terms(spec_loss, 128, 128), digits16, CPU,
                                       teacher=trained_teacher, explanation=spec_loss.explanation, cache_maps=False)
    assert isinstance(augmenting.signals.provider("target_maps"), LiveTeacherMaps)
    augmenting.close()


def test_oracle_objective_distills_from_x_star_but_takes_teacher_features_and_maps_on_x(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    spec_loss = _loss("oracle", explanation={"weight": 1.0}, at=1000.0)
    student = build_model("cnn", 10, 1)
    objective = DistillationObjective(student, build_terms(spec_loss, 128, 128), digits16, CPU,
                                      teacher=trained_teacher, explanation=spec_loss.explanation, oracle_gamma=1.0)
    x, y = digits16.train_x[:16], digits16.train_y[:16]
    index = torch.arange(16)
    view = objective.signals.compute(Batch(x, y, index, index, 0, 1), objective.terms.needs_at(0))
    with torch.no_grad():
        plain_logits = trained_teacher(x)
        plain_features = objective.signals.forward.tap.take()
    assert not torch.allclose(view["teacher_logits"], plain_logits)  # KD targets come from x*
    ce = torch.nn.functional.cross_entropy
    assert ce(view["teacher_logits"], y) < ce(plain_logits, y)
    torch.testing.assert_close(view["teacher_features"], plain_features)  # AT/FitNet read the teacher on x
    assert torch.equal(view["target_classes"], plain_logits.argmax(dim=1))
    assert view["target_maps"].shape == (16, 1, 4, 4)
    objective.close()


def test_explanation_term_runs_only_on_guided_steps(digits16: DataBundle, trained_teacher: torch.nn.Module) -> None:
    spec_loss = _loss("e2kd", explanation={"every": 3})
    student = build_model("cnn", 10, 1)
    objective = DistillationObjective(student, build_terms(spec_loss, 128, 128), digits16, CPU,
                                      teacher=trained_teacher, explanation=spec_loss.explanation)
    x, y, index = digits16.train_x[:8], digits16.train_y[:8], torch.arange(8)
    names = [set(objective.step(Batch(x, y, index, index, step, 4)).values) for step in range(4)]
    assert names == [{"ce", "kd", "explanation"}, {"ce", "kd"}, {"ce", "kd"}, {"ce", "kd", "explanation"}]
    objective.close()


@pytest.mark.parametrize("explainer", ["input_gradient", "input_x_gradient"])
def test_input_explainers_train_and_lower_the_explanation_loss(
    digits16: DataBundle, trained_teacher: torch.nn.Module, explainer: str
) -> None:
    _, history, _ = _distill(digits16, trained_teacher, "e2kd", epochs=3, explanation={"explainer": explainer})
    losses = [entry["losses"]["explanation"] for entry in history]
    assert all(0.0 <= value <= 2.0 for value in losses)
    assert losses[-1] < losses[0]


def test_distillation_keeps_the_teacher_frozen_and_trains_the_fitnet_regressor(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    before = _params(trained_teacher)
    student, history, objective = _distill(digits16, trained_teacher, "fitnet", epochs=1)
    regressor = objective.terms.terms[1].regressor
    torch.manual_seed(0)
    fresh = build_terms(_loss("fitnet"), 128, 128).terms[1].regressor
    assert not torch.equal(regressor.weight, fresh.weight)  # optimised with the student
    assert not any(key.startswith("regressor") for key in student.state_dict())  # not part of the export
    assert all(torch.equal(value, trained_teacher.state_dict()[key]) for key, value in before.items())
    assert not trained_teacher.training
    assert set(history[0]["losses"]) == {"ce", "fitnet"}


def test_same_seed_gives_identical_students_and_another_seed_does_not(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    first, _, _ = _distill(digits16, trained_teacher, "kd", epochs=1)
    again, _, _ = _distill(digits16, trained_teacher, "kd", epochs=1)
    other, _, _ = _distill(digits16, trained_teacher, "kd", epochs=1, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(first.fc.weight, other.fc.weight)


def test_progress_is_reported_after_every_step_and_epoch_with_a_rising_fraction(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    recorder = Recorder()
    _, history, _ = _distill(digits16, trained_teacher, "kd", epochs=2, callbacks=recorder)
    steps = -(-len(digits16.train_x) // 32)
    epoch_ends = [r for r in recorder.reports if "test_accuracy" in r.metrics]
    assert len(recorder.reports) == 1 + 2 * steps + 2  # start, every step, every epoch end
    assert [r.epoch for r in epoch_ends] == [1, 2]
    fractions = [r.fraction for r in recorder.reports]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert all("loss" in r.metrics for r in recorder.reports[1:])
    assert epoch_ends[-1].metrics["test_accuracy"] == history[-1]["test_accuracy"]
    entry = history[-1]
    assert set(entry) >= {"epoch", "loss", "losses", "train_accuracy", "test_accuracy", "seconds", "lr"}
    assert 0.0 <= entry["train_accuracy"] <= 1.0 and 0.0 <= entry["test_accuracy"] <= 1.0


def test_cancelling_between_steps_raises_and_keeps_the_last_epoch_checkpoint(
    digits16: DataBundle, trained_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    steps = -(-len(digits16.train_x) // 32)
    checkpoint = tmp_path / "distilling.pt"
    with pytest.raises(JobCancelled):
        _distill(digits16, trained_teacher, "kd", epochs=3, checkpoint=checkpoint,
                 callbacks=Recorder(cancel_after_steps=steps + 2))
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run_bit_for_bit(
    digits16: DataBundle, trained_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    steps = -(-len(digits16.train_x) // 32)
    checkpoint = tmp_path / "distilling.pt"
    extra = {"fitnet": 1.0}  # e2kd + FitNet: the map cache and the regressor must both resume
    with pytest.raises(JobCancelled):
        _distill(digits16, trained_teacher, epochs=3, checkpoint=checkpoint,
                 callbacks=Recorder(cancel_after_steps=steps + 1), **extra)
    cache = load_checkpoint(checkpoint)["objective"]["signals"]["target_maps"]
    assert bool(cache["filled"].all()) and cache["maps"].shape[0] == len(digits16.train_x)  # saved by its provider
    main_file = torch.load(checkpoint, weights_only=True)["objective"]["signals"]["target_maps"]
    assert "maps" not in main_file  # the cache sits in its side file, not in the per-epoch main file
    resumed, resumed_history, _ = _distill(digits16, trained_teacher, epochs=3, checkpoint=checkpoint, **extra)
    straight, straight_history, _ = _distill(digits16, trained_teacher, epochs=3, **extra)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [e["losses"] for e in resumed_history] == [e["losses"] for e in straight_history]


def test_the_full_map_cache_is_written_once_not_at_every_epoch_end(
    digits16: DataBundle, trained_teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    real = checkpoint_module._write

    def recording(path: Path, state: dict) -> None:  # spy: writes through the real function
        written.append(path)
        real(path, state)

    monkeypatch.setattr(checkpoint_module, "_write", recording)
    _distill(digits16, trained_teacher, epochs=3, checkpoint=tmp_path / "distilling.pt")
    parts = [path for path in written if path.parent.name == "distilling.parts"]
    assert written.count(tmp_path / "distilling.pt") == 3
    assert len(parts) == 1  # filled in epoch 1; epochs 2 and 3 changed nothing, so nothing was rewritten
    assert [path.name for path in (tmp_path / "distilling.parts").iterdir()] == [parts[0].name]


@pytest.mark.parametrize(("optimizer", "scheduler"), [("sgd", "cosine"), ("adam", "none"), ("adamw", "cosine")])
def test_each_optimizer_and_schedule_trains_the_teacher(digits16: DataBundle, optimizer: str, scheduler: str) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1)
    objective = DistillationObjective(model, cross_entropy_only(), digits16, CPU)
    lr = 0.05 if optimizer == "sgd" else 0.003
    config = OptimConfig(epochs=3, batch_size=32, optimizer=optimizer, lr=lr, scheduler=scheduler, weight_decay=1e-4)
    history = train(model, objective, digits16.train_x, digits16.train_y, config, stage="training_teacher", device=CPU)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9) if scheduler == "cosine" else history[-1]["lr"] == lr


def test_augmented_training_is_still_deterministic(digits16: DataBundle) -> None:
    def run() -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model("cnn", 10, 1)
        objective = DistillationObjective(model, cross_entropy_only(), digits16, CPU)
        train(model, objective, digits16.train_x, digits16.train_y, OptimConfig(epochs=1, batch_size=64),
              stage="training_teacher", device=CPU, augment=True)
        return model

    assert torch.equal(run().fc.weight, run().fc.weight)


def test_explainer_autoencoder_learns_the_teachers_maps(digits16: DataBundle, trained_teacher: torch.nn.Module) -> None:
    autoencoder, objective = autoencoder_objective(trained_teacher, digits16, "gradcam", CPU, seed=0)
    assert objective.train_targets.shape == (len(digits16.train_x), 1, 4, 4)
    assert 0.0 <= float(objective.train_targets.min()) and float(objective.train_targets.max()) <= 1.0
    untrained = objective.held_out()["test_map_mse"]
    config = OptimConfig(epochs=4, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0)
    history = train(autoencoder, objective, digits16.train_x, digits16.train_y, config, stage="fitting_explainer",
                    device=CPU)
    assert "train_accuracy" not in history[-1]
    assert history[-1]["test_map_mse"] < untrained
    autoencoder.eval()
    with torch.no_grad():
        predicted = autoencoder(digits16.test_x[:4])
    assert predicted.shape == (4, 1, 4, 4) and 0.0 <= float(predicted.min()) and float(predicted.max()) <= 1.0


def test_autoencoder_target_replaces_the_teachers_maps(digits16: DataBundle, trained_teacher: torch.nn.Module) -> None:
    autoencoder, _ = autoencoder_objective(trained_teacher, digits16, "gradcam", CPU, seed=0)
    spec_loss = _loss("xdistill")
    objective = DistillationObjective(build_model("cnn", 10, 1), build_terms(spec_loss, 128, 128), digits16, CPU,
                                      teacher=trained_teacher, explanation=spec_loss.explanation,
                                      autoencoder=autoencoder, cache_maps=True)
    assert isinstance(objective.signals.provider("target_maps"), AutoencoderMaps)  # nothing to cache: it is cheap
    x, y, index = digits16.train_x[:8], digits16.train_y[:8], torch.arange(8)
    view = objective.signals.compute(Batch(x, y, index, index, 0, 1), objective.terms.needs_at(0))
    with torch.no_grad():
        torch.testing.assert_close(view["target_maps"], autoencoder.eval()(x))
    objective.close()
