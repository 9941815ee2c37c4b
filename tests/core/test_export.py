"""ONNX export and the latency table, on tiny models: the file runs in onnxruntime and matches PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from core.data import DataBundle
from core.models import predict_logits
from core.deploy.onnx import ONNX_TOLERANCE, OnnxExportError, check_onnx, export_checked, export_onnx
from core.deploy.latency import BATCH_SIZES, latency_table, percentile
from core.models import SmallCNN, build_model

CPU = torch.device("cpu")


class BesselHeadCNN(SmallCNN):
    """A small CNN whose features go through torch.special.i0e, which the ONNX exporter cannot translate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.fc(torch.special.i0e(pooled))


def _ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_digits_student_exports_with_a_dynamic_batch_and_matches_pytorch(
    digits16: DataBundle, trained_teacher: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "student.onnx"
    check = export_checked(trained_teacher, digits16.test_x, path)

    assert path.is_file() and check.size_bytes == path.stat().st_size
    assert check.images == len(digits16.test_x) and check.top1_agreement == 1.0
    assert 0.0 <= check.max_abs_diff <= ONNX_TOLERANCE and check.opset >= 18
    reference = predict_logits(trained_teacher, digits16.test_x, CPU).numpy()
    for batch in (1, 7, 64):  # batch sizes the export never saw
        ours = _ort_logits(path, digits16.test_x[:batch])
        assert ours.shape == (batch, 10)
        assert np.abs(ours - reference[:batch]).max() <= ONNX_TOLERANCE


@pytest.mark.slow
def test_torchvision_student_exports_and_matches_pytorch(digits16: DataBundle, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("torchvision/resnet18", 10, 1).eval()
    check = export_checked(model, digits16.test_x[:64], tmp_path / "student.onnx")
    assert check.top1_agreement == 1.0 and check.max_abs_diff <= ONNX_TOLERANCE
    ours = _ort_logits(tmp_path / "student.onnx", digits16.test_x[:3])
    assert np.abs(ours - predict_logits(model, digits16.test_x[:3], CPU).numpy()).max() <= ONNX_TOLERANCE


def test_unexportable_model_raises_and_leaves_no_file(digits16: DataBundle, tmp_path: Path) -> None:
    model = BesselHeadCNN(10, 1).eval()
    with pytest.raises(OnnxExportError, match="ConversionError"):
        export_checked(model, digits16.test_x[:8], tmp_path / "student.onnx")
    assert list(tmp_path.iterdir()) == []


def test_check_refuses_a_file_whose_logits_differ_from_the_model(digits16: DataBundle, tmp_path: Path) -> None:
    torch.manual_seed(0)
    exported, other = build_model("cnn", 10, 1).eval(), build_model("cnn", 10, 1).eval()
    export_onnx(exported, digits16.test_x, tmp_path / "a.onnx")
    check_onnx(tmp_path / "a.onnx", exported, digits16.test_x[:16])  # its own model passes
    with pytest.raises(OnnxExportError, match="differ from PyTorch"):
        check_onnx(tmp_path / "a.onnx", other, digits16.test_x[:16])


def test_latency_table_has_a_row_per_model_runtime_and_batch(
    digits16: DataBundle, trained_teacher: nn.Module, tmp_path: Path
) -> None:
    student = build_model("cnn", 10, 1).eval()
    export_onnx(student, digits16.test_x, tmp_path / "student.onnx")
    rows = latency_table({"teacher": trained_teacher, "student": student},
                         {"student": tmp_path / "student.onnx", "teacher": None}, digits16.test_x[:5], runs=3)

    keys = {(row["model"], row["runtime"], row["device"], row["batch"]) for row in rows}
    expected = {("teacher", "pytorch", "cpu", b) for b in BATCH_SIZES}
    expected |= {("student", runtime, "cpu", b) for runtime in ("pytorch", "onnxruntime") for b in BATCH_SIZES}
    assert expected <= keys and len(keys) == len(rows)
    for row in rows:
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["median_ms"] / 1000.0))


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 90) == 5.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([7.0], 90) == 7.0
