"""What a finished job ships: student.onnx, the latency table, report.html, the model card, the MLflow run."""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from core.data import load_dataset
from core.models import predict_logits
from core.deploy.onnx import ONNX_TOLERANCE
from core.models import build_model, load_weights
from core.models.cifar import BUILDERS as CIFAR_BUILDERS
from core.run import run_distillation
from core.spec import JobSpec
from core.publish.tracking import TrackingConfig
from tests.core.test_export import BesselHeadCNN

CPU = torch.device("cpu")
STUDENT_EPOCHS = 2


def _spec(**overrides: Any) -> JobSpec:
    spec = {
        "name": "ship-<e2kd>",  # markup in the name must come out escaped
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 10},
        "teacher": {"arch": "cnn", "epochs": 1},
        "student": {"arch": "resnet8"},
        "method": "e2kd",
        "training": {"epochs": STUDENT_EPOCHS, "batch_size": 32, "seed": 0, "device": "cpu"},
        "report": {"heatmaps": 5, "latency_runs": 2},
        **overrides,
    }
    return JobSpec.model_validate(spec)


@pytest.fixture(scope="module")
def tracked_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One tiny e2kd job with export on, logged to a real MLflow tracking store (SQLite backend)."""
    root = tmp_path_factory.mktemp("shipped")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("tests", artifact_location=(root / "artifacts").as_uri())
    result = run_distillation(_spec(), root / "job", tracking=TrackingConfig(uri, "tests", {"distill.job_id": "job_1"}))
    return root / "job", result, uri


@pytest.mark.slow
def test_student_onnx_runs_in_onnxruntime_and_matches_the_pytorch_student(tracked_job) -> None:
    out, result, _ = tracked_job
    spec = _spec()
    data = load_dataset(spec.dataset)
    student = load_weights(build_model("resnet8", data.num_classes, data.in_channels), out / "student.safetensors")
    reference = predict_logits(student, data.test_x, CPU).numpy()

    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: data.test_x.numpy()})[0]
    assert np.abs(ours - reference).max() <= ONNX_TOLERANCE
    assert (ours.argmax(axis=1) == reference.argmax(axis=1)).all()
    onnx = result["onnx"]
    assert onnx["file"] == "student.onnx" and onnx["images"] == len(data.test_y)
    assert onnx["max_abs_diff"] <= ONNX_TOLERANCE and onnx["top1_agreement"] == 1.0
    assert result["warnings"] == []


@pytest.mark.slow
def test_metrics_hold_the_latency_table_sizes_and_diagnostics(tracked_job) -> None:
    out, result, _ = tracked_job
    rows = {(r["model"], r["runtime"], r["device"], r["batch"]): r for r in result["latency"]}
    for model in ("teacher", "student"):
        for runtime in ("pytorch", "onnxruntime"):
            for batch in (1, 32):
                assert rows[(model, runtime, "cpu", batch)]["median_ms"] > 0
    for model in ("teacher", "student"):  # the headline numbers are the table's, not a second timing
        assert result[f"{model}_latency_ms"] == rows[(model, "pytorch", "cpu", 1)]["median_ms"]
    sizes = result["sizes"]
    assert sizes["student_onnx_bytes"] == (out / "student.onnx").stat().st_size
    assert sizes["student_safetensors_bytes"] == (out / "student.safetensors").stat().st_size
    assert sizes["teacher_onnx_bytes"] > 0
    assert len(result["per_class_accuracy"]["student"]) == 10
    assert sum(b["count"] for b in result["reliability"]["student"]) == result["onnx"]["images"]


@pytest.mark.slow
def test_report_is_self_contained_with_table_curves_and_every_heatmap(tracked_job) -> None:
    out, result, _ = tracked_job
    html = (out / "report.html").read_text()

    assert re.search(r"https?://", html, re.IGNORECASE) is None
    assert "<script" not in html.lower() and "<e2kd>" not in html and "ship-&lt;e2kd&gt;" in html
    assert "Student vs teacher" in html and f"{100 * result['student_accuracy']:.1f} %" in html
    for label in ("teacher: loss by term", "teacher: accuracy", "student: loss by term", "student: accuracy",
                  "student: reliability", "per-class top-1 accuracy"):
        assert f'aria-label="{label}' in html, label
    tiles = result["gallery"]
    assert len(tiles) == 5 and result["heatmaps"][-1] == "heatmaps/grid.png"
    positions = []
    for tile in tiles:
        encoded = base64.b64encode((out / tile["file"]).read_bytes()).decode()
        assert f"data:image/png;base64,{encoded}" in html
        positions.append(html.index(encoded))
    wrong_first = [tile["misclassified"] for _, tile in sorted(zip(positions, tiles, strict=True),
                                                                key=lambda pair: pair[0])]
    assert wrong_first == sorted(wrong_first, reverse=True)


@pytest.mark.slow
def test_model_card_has_hub_front_matter_and_the_jobs_numbers(tracked_job) -> None:
    out, result, _ = tracked_job
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    fields = {line.split(":")[0] for line in front.splitlines() if not line.startswith("-")}
    assert {"library_name", "tags", "datasets", "metrics", "base_model"} <= fields
    assert 'base_model: "cnn"' in front and '- "digits"' in front and '- "onnx"' in front
    for heading in ("## Intended use", "## Metrics", "## Limitations", "## Training spec"):
        assert heading in body
    assert f"{100 * result['student_accuracy']:.1f} %" in body and f"{result['ece']:.3f}" in body


@pytest.mark.slow
def test_mlflow_run_holds_params_metrics_by_step_and_artifacts(tracked_job) -> None:
    out, result, uri = tracked_job
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["mlflow_run_id"])

    assert run.info.status == "FINISHED" and run.data.tags["distill.job_id"] == "job_1"
    assert run.data.params["training.lr"] == "0.05" and run.data.params["method"] == "e2kd"
    assert run.data.metrics["student_accuracy"] == pytest.approx(result["student_accuracy"])
    history = client.get_metric_history(run.info.run_id, "student/test_accuracy")
    assert sorted(m.step for m in history) == list(range(0, STUDENT_EPOCHS + 1))  # epoch 0: before any step
    expected = [e["test_accuracy"] for e in result["history"]["student"]]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(expected)
    assert client.get_metric_history(run.info.run_id, "student/loss_explanation")
    names = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"student.safetensors", "student.onnx", "report.html", "README.md", "metrics.json", "heatmaps"} <= names
    heatmaps = {item.path for item in client.list_artifacts(run.info.run_id, "heatmaps")}
    assert {f"heatmaps/{name}" for name in ("0000.png", "grid.png")} <= heatmaps
    assert json.loads((out / "metrics.json").read_text())["mlflow_run_id"] == run.info.run_id


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_unexportable_student_and_a_dead_tracking_server_are_warnings_not_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(CIFAR_BUILDERS, "bessel-cnn", lambda classes, channels: BesselHeadCNN(classes, channels))
    spec = _spec(student={"arch": "bessel-cnn"}, training={"epochs": 1, "batch_size": 32, "device": "cpu"})
    tracking = TrackingConfig(f"http://127.0.0.1:{_closed_port()}", "tests")

    result = run_distillation(spec, tmp_path, tracking=tracking)

    assert result["onnx"] is None and not (tmp_path / "student.onnx").exists()
    assert [w["code"] for w in result["warnings"]] == ["onnx_export_failed", "tracking_failed"]
    assert "ConversionError" in result["warnings"][0]["message"]
    assert result["mlflow_run_id"] is None
    assert (tmp_path / "student.safetensors").is_file() and (tmp_path / "report.html").is_file()
    runtimes = {(r["model"], r["runtime"]) for r in result["latency"]}
    assert ("student", "onnxruntime") not in runtimes and ("student", "pytorch") in runtimes
    assert ("teacher", "onnxruntime") in runtimes
    html = (tmp_path / "report.html").read_text()
    assert "onnx_export_failed" in html and "No <code>student.onnx</code>" in html
    assert json.loads((tmp_path / "metrics.json").read_text())["onnx"] is None
