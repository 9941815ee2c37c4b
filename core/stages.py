"""The training stages of a run: the teacher, the XDistillation autoencoder, the student.

Each stage is resumable the same way (`resumable_stage`): a stage that finished in an earlier
attempt is loaded from the file it left, one that was interrupted continues from its last epoch
checkpoint (core.train.loop), so a rerun ends bit-identical to an uninterrupted run. The stage
names are public (callbacks, progress, checkpoint files), so the autoencoder's stays
`fitting_explainer` although the code calls it the autoencoder, apart from the attribution explainers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import distributed
from core.data import DataBundle
from core.data.recipes import resolve_recipe
from core.errors import DistillError, JobCancelled, SpecError
from core.explain import FeatureTap, explaining_forwards
from core.models import (
    LayerNotFound, build_model, explained_layer, load_weights, pick_device, save_weights, set_input_normalisation,
)
from core.models.compat import DatasetShape
from core.models.heads import load_starting_weights
from core.publish.manifest import STUDENT_WEIGHTS, TEACHER_WEIGHTS
from core.resolver import Resolver
from core.resume import RunState
from core.spec import JobSpec
from core.terms import build_terms, cross_entropy_only, smooth_labels
from core.train.autoencoder import autoencoder_objective, restored_autoencoder
from core.train.callbacks import STAGES, RunCallbacks
from core.train.checkpoint import load_checkpoint
from core.train.loop import DistillationObjective, Objective, OptimConfig, train

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
AUTOENCODER_STAGE = "fitting_explainer"  # public name (callbacks, progress, checkpoint file)

History = list[dict[str, Any]]


class RunContext:
    """What the stages of one run share: the spec, its out folder and resume state, the host's callbacks
    and resolver, the device, and each stage's seconds and share of the progress bar."""

    def __init__(self, spec: JobSpec, out_dir: Path, callbacks: RunCallbacks, resolver: Resolver) -> None:
        self.spec, self.out_dir, self.callbacks, self.resolver = spec, out_dir, callbacks, resolver
        self.state = RunState.open(out_dir, spec, resolver)
        self.device = distributed.rank_device(pick_device(spec.training.device))
        self.checkpoints = out_dir / CHECKPOINTS
        self.seconds: dict[str, float] = {stage: info["seconds"] for stage, info in self.state.stages.items()}
        self.spans = _progress_spans(spec)
        self._given_teacher: Path | None = None
        self._given_student: Path | None = None

    def given_teacher(self) -> Path | None:
        """The file of the given teacher weights (resolved once, through the host's resolver); None when
        the run trains its teacher."""
        if self.spec.teacher.weights is not None and self._given_teacher is None:
            self._given_teacher = self.resolver.resolve_weights(self.spec.teacher.weights)
        return self._given_teacher

    def given_student(self) -> Path | None:
        """The file of the student's starting weights (resolved once, like the teacher's); None: a random start.
        The host's resolver names the teacher's field in its errors; they are the student's here."""
        if self.spec.student.weights is not None and self._given_student is None:
            try:
                self._given_student = self.resolver.resolve_weights(self.spec.student.weights)
            except DistillError as error:
                raise type(error)(error.message, field="student.weights") from error
        return self._given_student

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """One stage: the host may cancel before it starts; it is announced, logged and timed."""
        if distributed.main_decides(self.callbacks.should_cancel()):  # on several ranks rank 0's answer
            raise JobCancelled(f"cancelled before {name}")
        self.callbacks.on_stage(name)
        log.info("job %s: stage %s", self.spec.name, name)
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started

    def seed(self, stage: str) -> None:
        """A distinct, reproducible stream per stage: a student never starts as a copy of a teacher."""
        torch.manual_seed(self.spec.training.seed + STAGES.index(stage))

    def config(self, epochs: int) -> OptimConfig:
        return OptimConfig.from_training(self.spec.training, epochs)

    def train(
        self, model: nn.Module, objective: Objective, data: DataBundle, config: OptimConfig, stage: str,
        evaluate_start: bool = False,
    ) -> History:
        """core.train.loop.train with this run's device, callbacks, stage checkpoint and progress span."""
        return train(
            model, objective, data.train, None, config, stage=stage, device=self.device, callbacks=self.callbacks,
            checkpoint_path=self.checkpoints / f"{stage}.pt", augment=self.spec.dataset.augment,
            span=self.spans[stage], evaluate_start=evaluate_start,
        )


def resumable_stage(
    run: RunContext, stage: str, result: Path, load: Callable[[], nn.Module],
    fit: Callable[[], tuple[nn.Module, History]],
) -> tuple[nn.Module, History]:
    """Every training stage's skeleton: finished earlier (marked in run_state.json, `result` still on disk)
    -> `load` it with its saved history; otherwise `fit` it (which continues from the stage's epoch
    checkpoint and leaves `result`), then mark it finished."""
    if run.state.done(stage) and result.exists():
        log.info("job %s: %s already finished, loading %s", run.spec.name, stage, result.name)
        return load(), run.state.history(stage)
    with run.stage(stage):
        model, history = fit()
    run.state.complete(stage, run.seconds[stage], history)
    return model, history


def _progress_spans(spec: JobSpec) -> dict[str, tuple[float, float]]:
    """Each stage's share of the run's progress, roughly by cost (an epoch is one unit)."""
    costs = {
        "preparing_data": 0.5,
        "training_teacher": float(spec.teacher.epochs) if spec.teacher.weights is None else 0.0,
        AUTOENCODER_STAGE: 0.5 * spec.loss.xdistill.epochs if uses_autoencoder(spec) else 0.0,
        "distilling": 1.5 * spec.training.epochs,
        "evaluating": 1.0,
        "rendering": 0.5 if spec.report.heatmaps else 0.0,
    }
    total, spans, done = sum(costs.values()), {}, 0.0
    for stage in STAGES:
        spans[stage] = (done / total, (done + costs[stage]) / total)
        done += costs[stage]
    return spans


def uses_autoencoder(spec: JobSpec) -> bool:
    """XDistillation: the student matches the autoencoder's prediction of the teacher's maps."""
    explanation = spec.loss.explanation
    return explanation.weight > 0 and explanation.target == "autoencoder"


def _feature_channels(model: nn.Module, data: DataBundle, device: torch.device) -> int:
    """Channels of the explained layer, from one eval-mode forward (BatchNorm statistics untouched)."""
    tap = FeatureTap(explained_layer(model))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(data.train.take(slice(0, 1)).to(device))
    model.train(was_training)
    channels = int(tap.take().shape[1])
    tap.remove()
    return channels


def build_role_model(spec: JobSpec, role: str, data: DataBundle, num_classes: int | None = None) -> nn.Module:
    """The teacher's or student's network for this dataset (with `num_classes` outputs when given: a given
    teacher's own count), its explained layer set from `<role>.layer`."""
    model_spec = spec.teacher if role == "teacher" else spec.student
    try:
        model = build_model(
            model_spec.arch, num_classes or data.num_classes, data.in_channels, image_size=spec.dataset.image_size,
            layer=model_spec.layer,
        )
    except LayerNotFound as exc:
        raise SpecError(f"{role}.layer: {exc}", field=f"{role}.layer") from exc
    set_input_normalisation(model, data.mean, data.std)  # a model that encodes its own input (B-cos) needs it
    return model


def _load(model: nn.Module, path: Path, data: DataBundle) -> nn.Module:
    """Weights from `path`; the job's own normalisation wins over the one saved with them (its data are the input)."""
    load_weights(model, path)
    set_input_normalisation(model, data.mean, data.std)
    return model


def _train_to_file(
    run: RunContext, model: nn.Module, objective: DistillationObjective, data: DataBundle, epochs: int, stage: str,
    weights: Path, forwards: AbstractContextManager[None] | None = None, evaluate_start: bool = False,
) -> tuple[nn.Module, History]:
    """A stage whose result is a weights file: train `model` (inside `forwards`, the mode its explainer
    wants, when given), then write `weights`, the file a rerun loads instead of training again.

    The objective holds hooks and cached maps on the models, so it is closed even when training fails
    or is cancelled; the weights are written only once training finished.
    """
    try:
        with forwards if forwards is not None else nullcontext():
            history = run.train(model, objective, data, run.config(epochs), stage, evaluate_start)
    finally:
        objective.close()
    if distributed.is_main():  # every rank holds the same weights; rank 0 writes them
        save_weights(model, weights)
    return model, history


def feed_teacher_normalisation(spec: JobSpec, data: DataBundle, teacher: nn.Module) -> nn.Module:
    """teacher.normalize (core.given_teacher), for a given teacher and one trained here alike."""
    from core.given_teacher import feed_teacher_normalisation as feed

    return feed(spec, data, teacher)


def load_given_teacher(spec: JobSpec, data: DataBundle, given: Path) -> nn.Module:
    """The given teacher (core.given_teacher: a state dict or a torch.export program, its classes mapped)."""
    from core.given_teacher import given_teacher

    return given_teacher(spec, data, given, build_role_model)


def train_teacher(run: RunContext, data: DataBundle) -> tuple[nn.Module, History]:
    """The given teacher (checked against the dataset before a shape mismatch could confuse), or one trained
    here with cross-entropy alone into teacher.safetensors."""
    spec = run.spec
    run.seed("training_teacher")
    given = run.given_teacher()
    if given is not None:
        return load_given_teacher(spec, data, given).to(run.device), []
    teacher = build_role_model(spec, "teacher", data)
    weights = run.out_dir / TEACHER_WEIGHTS

    def fit() -> tuple[nn.Module, History]:
        objective = DistillationObjective(teacher, cross_entropy_only(), data, run.device)
        return _train_to_file(run, teacher, objective, data, spec.teacher.epochs, "training_teacher", weights)

    return resumable_stage(run, "training_teacher", weights, lambda: _load(teacher, weights, data).to(run.device), fit)


def fit_autoencoder(run: RunContext, data: DataBundle, teacher: nn.Module) -> tuple[nn.Module, History]:
    """The XDistillation autoencoder; its result is the stage's final epoch checkpoint (no weights file)."""
    spec = run.spec
    explainer = spec.loss.explanation.explainer
    checkpoint = run.checkpoints / f"{AUTOENCODER_STAGE}.pt"

    def load() -> nn.Module:
        return restored_autoencoder(teacher, data, explainer, load_checkpoint(checkpoint)["model"], run.device)

    def fit() -> tuple[nn.Module, History]:
        seed = spec.training.seed + STAGES.index(AUTOENCODER_STAGE)
        autoencoder, objective = autoencoder_objective(teacher, data, explainer, run.device, seed)
        config = OptimConfig(
            epochs=spec.loss.xdistill.epochs, batch_size=spec.training.batch_size, optimizer="adam",
            lr=spec.loss.xdistill.lr, weight_decay=0.0, scheduler="cosine", seed=spec.training.seed,
        )
        return autoencoder, run.train(autoencoder, objective, data, config, AUTOENCODER_STAGE)

    return resumable_stage(run, AUTOENCODER_STAGE, checkpoint, load, fit)


def distill_student(
    run: RunContext, data: DataBundle, teacher: nn.Module, autoencoder: nn.Module | None
) -> tuple[nn.Module, History]:
    """The student, trained on the spec's loss terms against the frozen teacher into student.safetensors."""
    spec = run.spec
    run.seed("distilling")
    student = build_role_model(spec, "student", data)
    if (given := run.given_student()) is not None:
        load_starting_weights(student, given, spec.student.arch, spec.student.head,
                              DatasetShape(data.num_classes, data.in_channels))
        set_input_normalisation(student, data.mean, data.std)  # the job's data are the input
    student = student.to(run.device)
    weights = run.out_dir / STUDENT_WEIGHTS

    def fit() -> tuple[nn.Module, History]:
        teacher.to(run.device)
        terms = smooth_labels(build_terms(
            spec.loss, _feature_channels(student, data, run.device), _feature_channels(teacher, data, run.device)
        ), spec.training.label_smoothing).to(run.device)
        explaining = spec.loss.explanation.weight > 0
        objective = DistillationObjective(
            student, terms, data, run.device, teacher=teacher,
            explanation=spec.loss.explanation if explaining else None, oracle_gamma=spec.loss.oracle_gamma,
            autoencoder=autoencoder if explaining else None,
            cache_maps=resolve_recipe(spec.dataset.augment, spec.dataset.image_size) == "none",
        )
        forwards = explaining_forwards(spec.loss.explanation.explainer, student, teacher)
        return _train_to_file(run, student, objective, data, spec.training.epochs, "distilling", weights, forwards,
                              evaluate_start=True)

    return resumable_stage(run, "distilling", weights, lambda: _load(student, weights, data).to(run.device), fit)


def train_models(run: RunContext, data: DataBundle) -> tuple[nn.Module, nn.Module, dict[str, History]]:
    """The training stages in order: teacher (trained or given), the XDistillation autoencoder when the
    explanation target asks for it, then the student; with each stage's history (metrics.json's keys)."""
    teacher, teacher_history = train_teacher(run, data)
    feed_teacher_normalisation(run.spec, data, teacher)
    teacher.eval().requires_grad_(False)
    autoencoder, autoencoder_history = None, None
    if uses_autoencoder(run.spec):
        autoencoder, autoencoder_history = fit_autoencoder(run, data, teacher)
    student, student_history = distill_student(run, data, teacher, autoencoder)
    history = {"teacher": teacher_history, "student": student_history}
    if autoencoder_history is not None:
        history["explainer"] = autoencoder_history  # metrics.json's key, as clients read it
    return teacher, student, history
