"""One job, start to finish: data, the training stages, evaluation, deployment, heatmaps, report.

`run_distillation` is what a worker calls and what `distill run` runs; both leave the same
artifacts in the out folder. A run can be interrupted at any point and rerun with the same
folder: finished stages are not redone and the stage that was running continues from its last
epoch checkpoint, so the final student is bit-identical to that of an uninterrupted run
(core.stages). The folder remembers the run's identity and refuses another spec (core.resume).

The spec is the one the host's client sent: an uploaded dataset or teacher is named by its id
and read through the host's resolver (core.resolver), so no server path reaches an artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import distributed
from core.data import DataBundle, load_dataset
from core.distributed.launch import check_world, run_on_ranks
from core.deploy.deployment import deployment, warning
from core.evaluate import evaluate
from core.explain import use_settings
from core.explain.cam import tapped_forward
from core.explain.cost import explanation_cost_warning
from core.models import count_params, explained_layer, explained_layer_path, predict_logits
from core.models.device import describe_device
from core.publish.heatmaps import HeatmapTile, render_gallery
from core.publish.manifest import HEATMAP_GRID, METRICS, TEACHER_WEIGHTS
from core.publish.model_card import write_model_card
from core.publish.report_page import write_report
from core.publish.tracking import TrackingConfig, track_job
from core.resolver import LocalFiles, Resolver
from core.resume import write_json
from core.spec import JobSpec
from core.stages import History, RunContext, train_models, train_teacher
from core.terms import term_weights
from core.models.inputs import fed_normalisation
from core.train.callbacks import NullCallbacks, RunCallbacks

log = logging.getLogger(__name__)


def run_distillation(
    spec: JobSpec,
    out_dir: Path,
    callbacks: RunCallbacks | None = None,
    *,
    named_datasets: Mapping[str, Path] | None = None,
    resolver: Resolver | None = None,
    tracking: TrackingConfig | None = None,
) -> dict[str, Any]:
    """Run (or resume) `spec` into `out_dir`; returns what metrics.json holds.

    `named_datasets` maps operator-registered dataset names to paths; `resolver` reads what the spec
    names by reference (default: paths as on the command line). With `tracking`, the finished job is
    also logged as an MLflow run (a failure there is a warning).

    Raises DistillError subclasses for problems the user can fix, JobCancelled when the
    callbacks ask to stop (checkpoints are kept, so rerunning continues the run).
    """
    if spec.training.devices > 1 and not distributed.current().active:  # N ranks, launched from here
        return run_on_ranks("distill", spec, out_dir, callbacks, named_datasets=named_datasets, resolver=resolver,
                            tracking=tracking)
    check_world(spec)
    run = _open(spec, out_dir, callbacks, resolver)
    if (finished := _finished_metrics(run, "rendering")) is not None:
        log.info("job %s: already finished in %s", spec.name, run.out_dir)
        return finished
    use_settings(spec.loss.explanation.settings(spec.training.seed))  # every map this job makes

    data = _prepare(run, named_datasets)
    teacher, student, history = train_models(run, data)
    if not distributed.main_continues_alone():
        return {}  # on several ranks, rank 0 alone evaluates, exports and reports
    explainer = spec.loss.explanation.explainer
    with run.stage("evaluating"):
        metrics = evaluate(student, teacher, data, run.device, explainer=explainer)
        shipped, warnings = _deployment(run, data, student, teacher)
        warnings = [*_explanation_cost(spec, data, teacher), *warnings]
        metrics.update(shipped)
    with run.stage("rendering"):
        tiles = render_gallery(student, teacher, data, run.out_dir, spec.report.heatmaps, run.device, explainer)
    result = _metrics_document(run, metrics, history, tiles, (teacher, student), list(data.class_names), warnings)
    result["inputs"] = {role: fed_normalisation(model, data.mean, data.std) for role, model in
                        (("teacher", teacher), ("student", student))}  # what each model was fed
    write_json(run.out_dir / METRICS, result)
    _publish(run.out_dir, result, tracking)
    _finish(run, "rendering")
    log.info(
        "job %s: done in %.1fs: student %.4f, teacher %.4f, explanation cosine %.4f",
        spec.name, sum(run.seconds.values()), metrics["student_accuracy"], metrics["teacher_accuracy"],
        metrics["explanation_cosine"],
    )
    return result


def run_teacher(
    spec: JobSpec,
    out_dir: Path,
    callbacks: RunCallbacks | None = None,
    *,
    named_datasets: Mapping[str, Path] | None = None,
    resolver: Resolver | None = None,
) -> dict[str, Any]:
    """Only the teacher of `spec` (data + training_teacher), for a sweep whose children share it.

    Writes `teacher.safetensors` and `metrics.json` (teacher_accuracy, num_classes, in_channels,
    weights_sha256, history) and resumes like `run_distillation`. The teacher is trained exactly as
    `run_distillation` would train it for this spec, so a child given these weights matches one that
    trained its own teacher with the same settings."""
    if spec.training.devices > 1 and not distributed.current().active:
        return run_on_ranks("teacher", spec, out_dir, callbacks, named_datasets=named_datasets, resolver=resolver)
    check_world(spec)
    run = _open(spec, out_dir, callbacks, resolver)
    if (finished := _finished_metrics(run, "evaluating")) is not None:
        return finished
    data = _prepare(run, named_datasets)
    teacher, history = train_teacher(run, data)
    if not distributed.main_continues_alone():
        return {}
    with run.stage("evaluating"):
        teacher.eval()
        logits = predict_logits(teacher, data.test_x, run.device)
        accuracy = float((logits.argmax(dim=1).cpu() == data.test_y).float().mean())
    weights = run.out_dir / TEACHER_WEIGHTS
    result: dict[str, Any] = {
        "teacher_accuracy": accuracy,
        "teacher_params": count_params(teacher),
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "history": {"teacher": history},
        "seconds": dict(run.seconds),
        "spec_sha256": run.state.digest,
    }
    write_json(run.out_dir / METRICS, result)
    _finish(run, "evaluating")
    log.info("job %s: teacher done, accuracy %.4f", spec.name, accuracy)
    return result


def _open(spec: JobSpec, out_dir: Path, callbacks: RunCallbacks | None, resolver: Resolver | None) -> RunContext:
    """The out folder (created) and its resume state; the defaults are those of library use."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(spec, out_dir, callbacks or NullCallbacks(), resolver or LocalFiles())


def _finished_metrics(run: RunContext, last_stage: str) -> dict[str, Any] | None:
    """What metrics.json holds when an earlier attempt finished the run through `last_stage`, else None:
    a rerun of a finished run redoes nothing and answers the same."""
    metrics_path = run.out_dir / METRICS
    if run.state.done(last_stage) and metrics_path.exists():
        return json.loads(metrics_path.read_text())
    return None


def _prepare(run: RunContext, named_datasets: Mapping[str, Path] | None) -> DataBundle:
    """The run's seed, then the preparing_data stage. Given teacher and student weights are resolved first, so a
    deleted upload fails the job before its data are fetched and decoded."""
    torch.manual_seed(run.spec.training.seed)
    with run.stage("preparing_data"):
        run.given_teacher()
        run.given_student()
        return load_dataset(run.spec.dataset, named=named_datasets, resolver=run.resolver)


def _finish(run: RunContext, last_stage: str) -> None:
    """The run is final: its last stage is marked done and the checkpoints go (nothing left to resume)."""
    run.state.complete(last_stage, run.seconds[last_stage])
    shutil.rmtree(run.checkpoints, ignore_errors=True)


def _deployment(
    run: RunContext, data: DataBundle, student: nn.Module, teacher: nn.Module
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """student.onnx (checked), the latency table with the headline latencies read from it, and file sizes."""
    return deployment(
        student, teacher, data, run.out_dir, onnx=run.spec.export.onnx, latency_runs=run.spec.report.latency_runs,
        teacher_weights=run.given_teacher() or run.out_dir / TEACHER_WEIGHTS,
    )


def _metrics_document(
    run: RunContext, metrics: dict[str, Any], history: dict[str, History], tiles: list[HeatmapTile],
    models: tuple[nn.Module, nn.Module], class_names: list[str], warnings: list[dict[str, str]],
) -> dict[str, Any]:
    """What metrics.json holds: the evaluation, each stage's history and how the run was set up (the spec
    as its client sent it)."""
    spec, (teacher, student) = run.spec, models
    return {
        **metrics,
        "history": history,
        "method": spec.method,
        "loss_terms": term_weights(spec.loss),
        "oracle_gamma": spec.loss.oracle_gamma,
        "heatmaps": [tile.file for tile in tiles] + ([HEATMAP_GRID] if tiles else []),
        "gallery": [tile.as_dict() for tile in tiles],
        "class_names": class_names,
        "explained_layers": {"teacher": explained_layer_path(teacher), "student": explained_layer_path(student)},
        "seconds": dict(run.seconds),
        "device": str(run.device),
        "device_info": {**describe_device(run.device), "ranks": spec.training.devices},
        "spec_sha256": run.state.digest,
        "spec": spec.model_dump(mode="json"),
        "warnings": warnings,
    }


def _explanation_cost(spec: JobSpec, data: DataBundle, teacher: nn.Module) -> list[dict[str, str]]:
    """The job's warning when its explainer made it much slower (core.explain.cost), else nothing."""
    explanation = spec.loss.explanation
    if explanation.weight <= 0 or explanation.target != "teacher":
        return []
    with torch.no_grad():
        activations = tapped_forward(teacher, data.test.take(slice(0, 1)).to(next(teacher.parameters()).device),
                                     explained_layer(teacher)).activations
    steps = spec.training.epochs * math.ceil(len(data.train) / spec.training.batch_size)
    message = explanation_cost_warning(explanation.explainer, explanation.every, steps, activations.shape[1])
    if message is None:
        return []
    log.warning("job %s: %s", spec.name, message)
    return [warning("explainer_cost", message)]


def _publish(out_dir: Path, result: dict[str, Any], tracking: TrackingConfig | None) -> None:
    """The human-facing outputs (report.html, the README.md model card), then the MLflow run if asked."""
    write_report(out_dir, result)
    write_model_card(out_dir, result)
    if tracking is None:
        return
    run_id, warnings = track_job(tracking, out_dir, result)
    result["mlflow_run_id"] = run_id
    result["warnings"] = [*result["warnings"], *warnings]
    write_json(out_dir / METRICS, result)
