"""A teacher from a team's own code (defined only in tests.teacher_code): trained here, exported with
torch.export, uploaded over HTTP, and distilled into resnet8 on an uploaded train/val zip."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.data import load_dataset
from core.spec import DatasetSpec
from tests.e2e.conftest import Stack
from tests.teacher_code import OptionAResNet, export_program

pytestmark = [pytest.mark.slow, pytest.mark.redis]

CLASSES = ("red", "green", "blue")


def _colour_zip(folder: Path) -> bytes:
    """train/ (8 per class) and val/ (4 per class) 32x32 PNGs whose dominant channel is the class; also
    unpacked into `folder`, so the test reads the very images the job reads."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, count in (("train", 8), ("val", 4)):
            for label, name in enumerate(CLASSES):
                for i in range(count):
                    pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                    pixels[..., label] += rng.integers(60, 130, dtype=np.uint8)
                    image = io.BytesIO()
                    Image.fromarray(pixels).save(image, format="PNG")
                    archive.writestr(f"colours/{split}/{name}/{i}.png", image.getvalue())
    archive_bytes = buffer.getvalue()
    zipfile.ZipFile(io.BytesIO(archive_bytes)).extractall(folder)
    return archive_bytes


def _trained_teacher(train_x: torch.Tensor, train_y: torch.Tensor) -> OptionAResNet:
    torch.manual_seed(0)
    model = OptionAResNet(num_classes=len(CLASSES))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(15):
        optimiser.zero_grad()
        F.cross_entropy(model(train_x), train_y).backward()
        optimiser.step()
    return model.eval()


def test_an_exported_option_a_resnet_teaches_resnet8_with_its_own_accuracy_and_layer3_heatmaps(
    sqlite_url: str, stacks: Callable[..., Stack], tmp_path: Path
) -> None:
    zipped = _colour_zip(tmp_path / "unpacked")
    data = load_dataset(DatasetSpec(path=str(tmp_path / "unpacked" / "colours"), image_size=32))
    train_x, train_y = data.train.take(slice(0, len(data.train))), data.train.labels
    teacher = _trained_teacher(train_x, train_y)
    test_x, test_y = data.test.take(slice(0, len(data.test))), data.test.labels
    with torch.no_grad():
        expected_accuracy = (teacher(test_x).argmax(1) == test_y).float().mean().item()
    program = export_program(teacher, tmp_path / "teacher.pt2")

    stack = stacks(sqlite_url)
    stack.start()
    client = stack.client
    assert client is not None
    dataset = client.post("/v1/datasets", files={"file": ("colours.zip", zipped, "application/zip")})
    assert dataset.status_code == 201, dataset.text
    model = client.post("/v1/models", files={"file": ("teacher.pt2", program.read_bytes(), "application/octet-stream")})
    assert model.status_code == 201, model.text
    assert (model.json()["arch"], model.json()["num_classes"], model.json()["in_channels"]) == ("exported", 3, 3)

    created = stack.post_job({
        "name": "exported-option-a-to-resnet8",
        "dataset": {"id": dataset.json()["id"], "image_size": 32},
        "teacher": {"weights": model.json()["id"]},
        "student": {"arch": "resnet8"},
        "method": "e2kd",
        "training": {"epochs": 1, "batch_size": 8, "lr": 0.01, "device": "cpu"},
        "report": {"heatmaps": 2, "latency_runs": 1},
        "export": {"onnx": False},
    })
    final = stack.wait_for_status(created["id"], {"succeeded", "failed", "cancelled"}, timeout_s=600)
    assert final["status"] == "succeeded", f"{final}\n{stack.logs()}"

    metrics = client.get(f"/v1/jobs/{created['id']}/artifacts/metrics.json").json()
    assert metrics["teacher_accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
    assert expected_accuracy > 1 / len(CLASSES)  # a teacher that learned something, so equality means something
    assert metrics["explained_layers"]["teacher"] == "layer3"
    first = client.get(f"/v1/jobs/{created['id']}/artifacts/{metrics['heatmaps'][0]}")
    with Image.open(io.BytesIO(first.content)) as heatmap:
        assert heatmap.text["teacher_layer"] == "layer3"
