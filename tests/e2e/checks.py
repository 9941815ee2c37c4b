"""Assertions shared by the end-to-end tests: what a finished job must prove about itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import torch

from core.train.callbacks import STAGES
from core.data import load_dataset
from core.models import predict_logits
from core.models import build_model, load_weights
from core.spec import JobSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recompute_student_accuracy(spec_document: dict[str, Any], weights: Path) -> float:
    """Top-1 test accuracy of downloaded weights, on the split the job's spec (dataset.split_seed) defines."""
    spec = JobSpec.model_validate(spec_document)
    data = load_dataset(spec.dataset)
    student = load_weights(build_model(spec.student.arch, data.num_classes, data.in_channels), weights)
    logits = predict_logits(student, data.test_x, torch.device("cpu"))
    return float((logits.argmax(dim=1) == data.test_y).float().mean())


def download(client: httpx.Client, job: dict[str, Any], name: str) -> bytes:
    urls = {artifact["name"]: artifact["url"] for artifact in job["artifacts"]}
    assert name in urls, f"{name} not among the artifacts {sorted(urls)}"
    response = client.get(urls[name])
    assert response.status_code == 200, response.text
    return response.content


def assert_downloads_reproduce_metrics(client: httpx.Client, job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """student.safetensors re-evaluates to metrics.json's accuracy; a heatmap is a real PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "student.safetensors"
    weights.write_bytes(download(client, job, "student.safetensors"))
    metrics = json.loads(download(client, job, "metrics.json"))
    assert job["metrics"]["student_accuracy"] == metrics["student_accuracy"]
    assert recompute_student_accuracy(job["spec"], weights) == metrics["student_accuracy"]
    heatmaps = sorted(a["name"] for a in job["artifacts"] if a["name"].startswith("heatmaps/"))
    assert heatmaps, f"no heatmaps among {[a['name'] for a in job['artifacts']]}"
    assert download(client, job, heatmaps[0]).startswith(PNG_MAGIC)
    return metrics


def squeeze(values: list[str]) -> list[str]:
    """Drop consecutive repeats: the sequence of distinct states a watcher saw."""
    return [value for i, value in enumerate(values) if i == 0 or values[i - 1] != value]


def assert_event_stream_of_a_successful_job(events: list[tuple[str, dict[str, Any]]]) -> None:
    assert events, "the event stream sent nothing"
    statuses = squeeze([document["status"] for _, document in events])
    assert statuses[-1] == "succeeded"
    assert "running" in statuses
    assert statuses in (["queued", "running", "succeeded"], ["running", "succeeded"]), statuses
    assert events[0][0] == "state"
    running_stages = {document["stage"] for _, document in events if document["status"] == "running"}
    assert running_stages and running_stages <= set(STAGES), running_stages
    fractions = [document["progress"]["fraction"] for _, document in events if document.get("progress")]
    assert fractions and all(0.0 <= fraction <= 1.0 for fraction in fractions)


def assert_shipped_outputs_are_served(client: httpx.Client, job: dict[str, Any]) -> None:
    """A service job publishes the checked ONNX student, the report page (no script) and the model card."""
    assert job["metrics"]["onnx"]["top1_agreement"] == 1.0, job["metrics"].get("warnings")
    assert download(client, job, "student.onnx")
    urls = {artifact["name"]: artifact["url"] for artifact in job["artifacts"]}
    page = client.get(urls["report.html"])
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'none'" in page.headers["content-security-policy"]
    assert "Student vs teacher" in page.text and "data:image/png;base64," in page.text
    assert download(client, job, "README.md").startswith(b"---\nlibrary_name:")
