"""One job, start to finish: data, teacher, (explainer), student, evaluation, heatmaps.

`run_job` is what a worker calls and what `python -m core.run SPEC.json --out DIR` runs;
both leave the same artifacts in the out folder. A run can be interrupted at any point
and rerun with the same folder: finished stages are not redone (their results are on
disk) and the stage that was running continues from its last epoch checkpoint, so the
final student is bit-identical to that of an uninterrupted run. The folder remembers the
spec's sha256 and refuses to continue a different spec.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from core.atomic import write_text_atomic
from core.explain.reference import captum_maps
from core.train.callbacks import STAGES, NullCallbacks, RunCallbacks
from core.train.checkpoint import load_checkpoint
from core.models.compat import DatasetShape, check_weights_file
from core.data import DataBundle, load_dataset
from core.deploy.deployment import cpu_batch1_ms, deployment
from core.errors import DistillError, JobCancelled, SpecError
from core.evaluate import evaluate
from core.models import predict_logits
from core.explain import FeatureTap, explaining_forwards
from core.models import (
    LayerNotFound,
    build_model,
    explained_layer,
    explained_layer_path,
    load_state,
    load_weights,
    pick_device,
    save_weights,
    set_input_normalisation,
)
from core.publish.model_card import write_model_card
from core.publish.heatmaps import HeatmapTile, render_gallery
from core.publish.report_page import write_report
from core.spec import ExportSpec, JobSpec, public_spec
from core.terms import build_terms, cross_entropy_only, term_weights
from core.terms.registry import identity_loss
from core.train.runtime import configure_torch
from core.publish.tracking import TrackingConfig, track_job, tracking_from_env
from core.train.loop import DistillationObjective, OptimConfig, train
from core.train.autoencoder import ExplainerAutoencoder, explainer_objective

log = logging.getLogger("core.run")  # not "__main__" under python -m

RUN_STATE = "run_state.json"
CHECKPOINTS = "checkpoints"


def spec_sha256(spec: JobSpec) -> str:
    """The identity of a spec: canonical JSON of every field after preset merging and defaults.

    Loss units added later leave the identity while at their defaults (core.terms.registry.identity_loss),
    and so does the `export` block, so an out folder written before a unit existed keeps its identity and still resumes.
    """
    document = spec.model_dump(mode="json")
    document["loss"] = identity_loss(document["loss"])
    if document.get("export") == ExportSpec().model_dump(mode="json"):
        del document["export"]  # the export block came later too: at its default it is not part of the identity
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False))


class RunState:
    """Which stages of this out folder are finished, with their history and seconds (run_state.json)."""

    def __init__(self, path: Path, sha256: str, stages: dict[str, dict[str, Any]]) -> None:
        self.path, self.sha256, self.stages = path, sha256, stages

    @classmethod
    def open(cls, out_dir: Path, spec: JobSpec) -> RunState:
        path, sha256 = out_dir / RUN_STATE, spec_sha256(spec)
        if not path.exists():
            state = cls(path, sha256, {})
            state._save()
            return state
        saved = json.loads(path.read_text())
        if saved.get("spec_sha256") != sha256:
            raise SpecError(
                f"the out folder {out_dir} holds a run of a different spec; use a new folder for a new spec"
            )
        return cls(path, sha256, saved.get("stages", {}))

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def complete(self, stage: str, seconds: float, history: list[dict[str, Any]] | None = None) -> None:
        self.stages[stage] = {"seconds": seconds, "history": history or []}
        self._save()

    def history(self, stage: str) -> list[dict[str, Any]]:
        return list(self.stages.get(stage, {}).get("history", []))

    def _save(self) -> None:
        _write_json(self.path, {"spec_sha256": self.sha256, "stages": self.stages})


class _Job:
    """The state shared by the stages of one run."""

    def __init__(self, spec: JobSpec, out_dir: Path, callbacks: RunCallbacks, named: Mapping[str, Path] | None) -> None:
        self.spec, self.out_dir, self.callbacks, self.named = spec, out_dir, callbacks, named
        self.state = RunState.open(out_dir, spec)
        self.device = pick_device(spec.training.device)
        self.checkpoints = out_dir / CHECKPOINTS
        self.seconds: dict[str, float] = {stage: info["seconds"] for stage, info in self.state.stages.items()}
        self.spans = _progress_spans(spec)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.callbacks.should_cancel():
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


def _progress_spans(spec: JobSpec) -> dict[str, tuple[float, float]]:
    """Each stage's share of the run's progress, roughly by cost (an epoch is one unit)."""
    explainer = spec.loss.explanation.weight > 0 and spec.loss.explanation.target == "autoencoder"
    costs = {
        "preparing_data": 0.5,
        "training_teacher": float(spec.teacher.epochs) if spec.teacher.weights is None else 0.0,
        "fitting_explainer": 0.5 * spec.loss.xdistill.epochs if explainer else 0.0,
        "distilling": 1.5 * spec.training.epochs,
        "evaluating": 1.0,
        "rendering": 0.5 if spec.report.heatmaps else 0.0,
    }
    total, spans, done = sum(costs.values()), {}, 0.0
    for stage in STAGES:
        spans[stage] = (done / total, (done + costs[stage]) / total)
        done += costs[stage]
    return spans


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


def build_role_model(spec: JobSpec, role: str, data: DataBundle) -> nn.Module:
    """The teacher's or student's network for this dataset, its explained layer set from `<role>.layer`."""
    model_spec = spec.teacher if role == "teacher" else spec.student
    try:
        model = build_model(
            model_spec.arch, data.num_classes, data.in_channels, image_size=spec.dataset.image_size,
            layer=model_spec.layer,
        )
    except LayerNotFound as exc:
        raise SpecError(f"{role}.layer: {exc}", field=f"{role}.layer") from exc
    set_input_normalisation(model, data.mean, data.std)  # a model that encodes its own input (B-cos) needs it
    return model


def _load_teacher_file(path: Path, arch: str, model: nn.Module, data: DataBundle) -> nn.Module:
    """Load given teacher weights, naming the spec mistake (class count, channels) before a shape mismatch would."""
    state = check_weights_file(path, arch, DatasetShape(data.num_classes, data.in_channels))
    return load_state(model, state, field="teacher.weights")


def _load(model: nn.Module, path: Path, data: DataBundle) -> nn.Module:
    """Weights from `path`; the job's own normalisation wins over the one saved with them (its data are the input)."""
    load_weights(model, path)
    set_input_normalisation(model, data.mean, data.std)
    return model


def _teacher(job: _Job, data: DataBundle) -> tuple[nn.Module, list[dict[str, Any]]]:
    spec = job.spec
    job.seed("training_teacher")
    teacher = build_role_model(spec, "teacher", data)
    if spec.teacher.weights is not None:
        path = Path(spec.teacher.weights)
        _load_teacher_file(path, spec.teacher.arch, teacher, data)
        set_input_normalisation(teacher, data.mean, data.std)  # the job's data are the input
        return teacher.to(job.device), []
    weights_path = job.out_dir / "teacher.safetensors"
    if job.state.done("training_teacher") and weights_path.exists():
        log.info("job %s: teacher already trained, loading %s", spec.name, weights_path)
        return _load(teacher, weights_path, data).to(job.device), job.state.history("training_teacher")
    with job.stage("training_teacher"):
        objective = DistillationObjective(teacher, cross_entropy_only(), data, job.device)
        try:
            history = train(
                teacher, objective, data.train, None, job.config(spec.teacher.epochs),
                stage="training_teacher", device=job.device, callbacks=job.callbacks,
                checkpoint_path=job.checkpoints / "training_teacher.pt", augment=spec.dataset.augment,
                span=job.spans["training_teacher"],
            )
        finally:
            objective.close()
        save_weights(teacher, weights_path)
    job.state.complete("training_teacher", job.seconds["training_teacher"], history)
    return teacher, history


def _explainer(job: _Job, data: DataBundle, teacher: nn.Module) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The XDistillation autoencoder: fitted once, then reloaded from its final checkpoint on a rerun."""
    spec = job.spec
    explainer = spec.loss.explanation.explainer
    checkpoint = job.checkpoints / "fitting_explainer.pt"
    if job.state.done("fitting_explainer") and checkpoint.exists():
        map_size = tuple(captum_maps(teacher, data.train.take(slice(0, 1)), torch.zeros(1, dtype=torch.long), explainer).shape[-2:])
        autoencoder = ExplainerAutoencoder(data.in_channels, map_size).to(job.device)
        autoencoder.load_state_dict(load_checkpoint(checkpoint)["model"])
        return autoencoder, job.state.history("fitting_explainer")
    with job.stage("fitting_explainer"):
        autoencoder, objective = explainer_objective(
            teacher, data, explainer, job.device, spec.training.seed + STAGES.index("fitting_explainer")
        )
        config = OptimConfig(
            epochs=spec.loss.xdistill.epochs, batch_size=spec.training.batch_size, optimizer="adam",
            lr=spec.loss.xdistill.lr, weight_decay=0.0, scheduler="cosine", seed=spec.training.seed,
        )
        history = train(
            autoencoder, objective, data.train, None, config, stage="fitting_explainer",
            device=job.device, callbacks=job.callbacks, checkpoint_path=checkpoint, augment=spec.dataset.augment,
            span=job.spans["fitting_explainer"],
        )
    job.state.complete("fitting_explainer", job.seconds["fitting_explainer"], history)
    return autoencoder, history


def _student(
    job: _Job, data: DataBundle, teacher: nn.Module, autoencoder: nn.Module | None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    spec = job.spec
    job.seed("distilling")
    student = build_role_model(spec, "student", data).to(job.device)
    weights_path = job.out_dir / "student.safetensors"
    if job.state.done("distilling") and weights_path.exists():
        return _load(student, weights_path, data).to(job.device), job.state.history("distilling")
    with job.stage("distilling"):
        teacher.to(job.device)
        terms = build_terms(
            spec.loss, _feature_channels(student, data, job.device), _feature_channels(teacher, data, job.device)
        ).to(job.device)
        explaining = spec.loss.explanation.weight > 0
        objective = DistillationObjective(
            student, terms, data, job.device, teacher=teacher,
            explanation=spec.loss.explanation if explaining else None,
            oracle_gamma=spec.loss.oracle_gamma,
            autoencoder=autoencoder if explaining else None,
            cache_maps=not spec.dataset.augment,
        )
        try:
            with explaining_forwards(spec.loss.explanation.explainer, student, teacher):
                history = train(
                    student, objective, data.train, None, job.config(spec.training.epochs),
                    stage="distilling", device=job.device, callbacks=job.callbacks,
                    checkpoint_path=job.checkpoints / "distilling.pt", augment=spec.dataset.augment,
                    span=job.spans["distilling"],
                )
        finally:
            objective.close()
        save_weights(student, weights_path)
    job.state.complete("distilling", job.seconds["distilling"], history)
    return student, history


def _metrics_document(
    job: _Job, metrics: dict[str, Any], history: dict[str, Any], tiles: list[HeatmapTile],
    models: tuple[nn.Module, nn.Module], class_names: list[str], warnings: list[dict[str, str]],
) -> dict[str, Any]:
    """What metrics.json holds: the evaluation, each stage's history and how the run was set up."""
    spec, (teacher, student) = job.spec, models
    return {
        **metrics,
        "history": history,
        "method": spec.method,
        "loss_terms": term_weights(spec.loss),
        "oracle_gamma": spec.loss.oracle_gamma,
        "heatmaps": [tile.file for tile in tiles] + (["heatmaps/grid.png"] if tiles else []),
        "gallery": [tile.as_dict() for tile in tiles],
        "class_names": class_names,
        "explained_layers": {"teacher": explained_layer_path(teacher), "student": explained_layer_path(student)},
        "seconds": dict(job.seconds),
        "device": str(job.device),
        "spec_sha256": job.state.sha256,
        "spec": public_spec(spec),
        "warnings": warnings,
    }


def _deployment(
    job: _Job, data: DataBundle, student: nn.Module, teacher: nn.Module
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """student.onnx (checked), the latency table and file sizes; the headline latencies come from the table."""
    spec = job.spec
    trained = job.out_dir / "teacher.safetensors"
    teacher_weights = Path(spec.teacher.weights) if spec.teacher.weights is not None else trained
    shipped, warnings = deployment(
        student, teacher, data, job.out_dir, onnx=spec.export.onnx, latency_runs=spec.report.latency_runs,
        teacher_weights=teacher_weights,
    )
    for model in ("student", "teacher"):
        shipped[f"{model}_latency_ms"] = cpu_batch1_ms(shipped["latency"], model)
    return shipped, warnings


def _publish(out_dir: Path, result: dict[str, Any], tracking: TrackingConfig | None) -> None:
    """The human-facing outputs (report.html, the README.md model card), then the MLflow run if asked."""
    write_report(out_dir, result)
    write_model_card(out_dir, result)
    if tracking is None:
        return
    run_id, warnings = track_job(tracking, out_dir, result)
    result["mlflow_run_id"] = run_id
    result["warnings"] = [*result["warnings"], *warnings]
    _write_json(out_dir / "metrics.json", result)


def _train_models(job: _Job, data: DataBundle) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The training stages in order: teacher (trained or loaded), the XDistillation autoencoder
    when the explanation target asks for it, then the student; with each stage's history."""
    teacher, teacher_history = _teacher(job, data)
    teacher.eval().requires_grad_(False)
    autoencoder, explainer_history = None, None
    explanation = job.spec.loss.explanation
    if explanation.weight > 0 and explanation.target == "autoencoder":
        autoencoder, explainer_history = _explainer(job, data, teacher)
    student, student_history = _student(job, data, teacher, autoencoder)
    history: dict[str, Any] = {"teacher": teacher_history, "student": student_history}
    if explainer_history is not None:
        history["explainer"] = explainer_history
    return teacher, student, history


def run_job(
    spec: JobSpec,
    out_dir: Path,
    callbacks: RunCallbacks | None = None,
    *,
    named_datasets: Mapping[str, Path] | None = None,
    reported_spec: Mapping[str, Any] | None = None,
    tracking: TrackingConfig | None = None,
) -> dict[str, Any]:
    """Run (or resume) `spec` into `out_dir`; returns what metrics.json holds.

    `reported_spec` is the spec as metrics.json shows it (default: `spec`). A service passes
    the spec its client sent (dataset and weights by id), so no server path reaches an artifact.
    With `tracking`, the finished job is also logged as an MLflow run (a failure there is a warning).

    Raises DistillError subclasses for problems the user can fix, JobCancelled when the
    callbacks ask to stop (checkpoints are kept, so rerunning continues the run).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = _Job(spec, out_dir, callbacks or NullCallbacks(), named_datasets)
    metrics_path = out_dir / "metrics.json"
    if job.state.done("rendering") and metrics_path.exists():
        log.info("job %s: already finished in %s", spec.name, out_dir)
        return json.loads(metrics_path.read_text())

    seed = spec.training.seed
    torch.manual_seed(seed)
    with job.stage("preparing_data"):
        data = load_dataset(spec.dataset, named=named_datasets)
    teacher, student, history = _train_models(job, data)

    with job.stage("evaluating"):
        metrics = evaluate(student, teacher, data, job.device, latency_runs=spec.report.latency_runs,
                           explainer=spec.loss.explanation.explainer)
        shipped, warnings = _deployment(job, data, student, teacher)
        metrics.update(shipped)
    with job.stage("rendering"):
        tiles = render_gallery(student, teacher, data, out_dir, spec.report.heatmaps, job.device,
                               spec.loss.explanation.explainer)
    result = _metrics_document(
        job, metrics, history, tiles, (teacher, student), list(data.class_names), warnings
    )
    if reported_spec is not None:
        result["spec"] = dict(reported_spec)
    _write_json(metrics_path, result)
    _publish(out_dir, result, tracking)
    job.state.complete("rendering", job.seconds["rendering"])
    shutil.rmtree(job.checkpoints, ignore_errors=True)  # the run is final: nothing left to resume
    log.info(
        "job %s: done in %.1fs: student %.4f, teacher %.4f, explanation cosine %.4f",
        spec.name, sum(job.seconds.values()), metrics["student_accuracy"], metrics["teacher_accuracy"],
        metrics["explanation_cosine"],
    )
    return result


def run_teacher(
    spec: JobSpec,
    out_dir: Path,
    callbacks: RunCallbacks | None = None,
    *,
    named_datasets: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Only the teacher of `spec` (data + training_teacher), for a sweep whose children share it.

    Writes `teacher.safetensors` and `metrics.json` (teacher_accuracy, num_classes, in_channels,
    weights_sha256, history) and resumes like `run_job`. The teacher is trained exactly as
    `run_job` would train it for this spec, so a child given these weights matches one that
    trained its own teacher with the same settings."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = _Job(spec, out_dir, callbacks or NullCallbacks(), named_datasets)
    metrics_path = out_dir / "metrics.json"
    if job.state.done("evaluating") and metrics_path.exists():
        return json.loads(metrics_path.read_text())
    torch.manual_seed(spec.training.seed)
    with job.stage("preparing_data"):
        data = load_dataset(spec.dataset, named=named_datasets)
    teacher, history = _teacher(job, data)
    with job.stage("evaluating"):
        teacher.eval()
        logits = predict_logits(teacher, data.test_x, job.device)
        accuracy = float((logits.argmax(dim=1).cpu() == data.test_y).float().mean())
    weights = out_dir / "teacher.safetensors"
    result: dict[str, Any] = {
        "teacher_accuracy": accuracy,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "history": {"teacher": history},
        "seconds": dict(job.seconds),
        "spec_sha256": job.state.sha256,
    }
    _write_json(metrics_path, result)
    job.state.complete("evaluating", job.seconds["evaluating"])
    shutil.rmtree(job.checkpoints, ignore_errors=True)
    log.info("job %s: teacher done, accuracy %.4f", spec.name, accuracy)
    return result


# --- command line ------------------------------------------------------------------------------------------


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem, each naming the dotted spec field: `training.lr: Input should be ...`."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(spec)"
        lines.append(f"{field}: {problem['msg']}")
    return lines


def _parse_data(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, Path]:
    named: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            parser.error(f"--data expects NAME=PATH, got '{value}'")
        named[name] = Path(path)
    return named


SUMMARY_KEYS = ("student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.run SPEC.json --out DIR [--data NAME=PATH ...]` (also `distill run`)."""
    from core.train.progress import terminal_callbacks

    parser = argparse.ArgumentParser(
        prog="distill run", description="Run one distillation job in this process (resumes an interrupted --out)."
    )
    parser.add_argument("spec", type=Path, help="job spec JSON (the body of POST /v1/jobs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for artifacts and checkpoints")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help="register a named dataset (ImageFolder tree or .npz); repeatable")
    args = parser.parse_args(argv)
    named = _parse_data(args.data, parser)
    logging.basicConfig(level=os.environ.get("DISTILL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configure_torch()  # DISTILL_TORCH_THREADS, as in a worker; the optimiser's imports before the first stage
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        spec = JobSpec.model_validate_json(args.spec.read_bytes())
    except OSError as exc:
        print(f"cannot read spec {args.spec}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"invalid spec {args.spec}:", file=sys.stderr)
        for line in describe_validation_error(exc):
            print(f"  {line}", file=sys.stderr)
        return 2

    callbacks = terminal_callbacks()
    try:
        result = run_job(spec, args.out, callbacks, named_datasets=named, tracking=tracking_from_env())
    except DistillError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"error [{exc.code}]{where}: {exc.message}", file=sys.stderr)
        return 2
    except (JobCancelled, KeyboardInterrupt):
        print(f"interrupted; rerun the same command to resume from the last checkpoint in {args.out}", file=sys.stderr)
        return 130
    finally:
        close = getattr(callbacks, "close", None)
        if close is not None:
            close()
    print(json.dumps({key: result[key] for key in SUMMARY_KEYS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
