"""Bring your own teacher and photos: a torchvision ResNet-50 `.pth` and a train/val zip, distilled over HTTP."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PHOTO_SIZES = ((48, 32), (30, 44), (40, 40), (56, 36))  # mixed sizes and aspect ratios


def _photo_zip() -> bytes:
    """train/ (4 per class) and val/ (2 per class) JPEG photos of two colour classes, sizes mixed."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, count in (("train", 4), ("val", 2)):
            for label, name in enumerate(("red", "blue")):
                for i in range(count):
                    width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
                    pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
                    pixels[..., 0 if label == 0 else 2] += 160
                    photo = io.BytesIO()
                    Image.fromarray(pixels).save(photo, format="JPEG")
                    archive.writestr(f"photos/{split}/{name}/{i}.jpg", photo.getvalue())
    return buffer.getvalue()


def _resnet50_pth(path: Path) -> Path:
    """A torchvision ResNet-50 for 2 classes, saved the way people do: torch.save(model.state_dict())."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=2).state_dict(), path)
    return path


def test_resnet50_pth_teacher_and_a_train_val_zip_distil_into_a_timm_student_with_layer4_heatmaps(
    sqlite_url: str, stacks: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stacks(sqlite_url)
    stack.start()
    client = stack.client
    assert client is not None

    dataset = client.post("/v1/datasets", files={"file": ("photos.zip", _photo_zip(), "application/zip")})
    assert dataset.status_code == 201, dataset.text
    assert (dataset.json()["test_split"], dataset.json()["num_train"], dataset.json()["num_test"]) == ("val", 8, 4)

    weights = _resnet50_pth(tmp_path / "teacher.pth")
    with weights.open("rb") as handle:
        model = client.post("/v1/models", data={"arch": "torchvision/resnet50"},
                            files={"file": ("teacher.pth", handle, "application/octet-stream")})
    assert model.status_code == 201, model.text
    assert (model.json()["num_classes"], model.json()["in_channels"]) == (2, 3)  # read from the weights

    created = stack.post_job({
        "name": "byo-resnet50-to-mobilenetv3",
        "dataset": {"id": dataset.json()["id"], "image_size": 32},
        "teacher": {"arch": "torchvision/resnet50", "weights": model.json()["id"]},
        "student": {"arch": "timm/mobilenetv3_small_050"},
        "method": "e2kd",
        "training": {"epochs": 1, "batch_size": 4, "lr": 0.01, "device": "cpu"},
        "report": {"heatmaps": 2, "latency_runs": 1},
    })
    final = stack.wait_for_status(created["id"], {"succeeded", "failed", "cancelled"}, timeout_s=600)
    assert final["status"] == "succeeded", f"{final}\n{stack.logs()}"

    metrics = client.get(f"/v1/jobs/{created['id']}/artifacts/metrics.json")
    assert metrics.status_code == 200
    assert metrics.json()["explained_layers"] == {"teacher": "layer4", "student": "blocks.5"}
    assert len(metrics.json()["heatmaps"]) == 3  # two rows and the grid
    first = client.get(f"/v1/jobs/{created['id']}/artifacts/{metrics.json()['heatmaps'][0]}")
    assert first.status_code == 200
    with Image.open(io.BytesIO(first.content)) as heatmap:
        assert heatmap.format == "PNG" and heatmap.width > 3 * 32  # input | teacher | student panels
        assert heatmap.text["teacher_layer"] == "layer4" and "LayerGradCam" in heatmap.text["explainer"]
    assert json.loads(json.dumps(metrics.json()["spec"]))["teacher"]["arch"] == "torchvision/resnet50"
