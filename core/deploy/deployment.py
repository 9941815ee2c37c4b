"""What a team needs to ship the student: the checked ONNX file, the latency table, the sizes.

`deployment` is one call from the job's evaluating stage. Its failures are never the
job's: an architecture the exporter cannot handle becomes a warning (and `onnx: null`),
and the latency table then holds the PyTorch rows only.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from core.data import DataBundle
from core.deploy.onnx import OnnxExportError, export_checked, export_onnx
from core.deploy.latency import latency_table
from core.publish.manifest import STUDENT_ONNX, STUDENT_WEIGHTS

log = logging.getLogger(__name__)


def warning(code: str, message: str) -> dict[str, str]:
    """One entry of metrics.json's `warnings`: something the job could not do, that did not fail it."""
    return {"code": code, "message": message}


def deployment(
    student: nn.Module,
    teacher: nn.Module,
    data: DataBundle,
    out_dir: Path,
    *,
    onnx: bool,
    latency_runs: int,
    teacher_weights: Path | None,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Export and check `student.onnx` (when `onnx`), time both models, measure their files.

    Returns the metrics fields (`onnx`, `latency`, `sizes`, `size_compression_ratio`, and the headline
    `student_latency_ms` / `teacher_latency_ms` read from the table: each model is timed once) and warnings.
    """
    warnings: list[dict[str, str]] = []
    onnx_info: dict[str, Any] | None = None
    student_path = out_dir / STUDENT_ONNX
    student_path.unlink(missing_ok=True)  # a rerun never keeps an earlier attempt's file unchecked
    if onnx:
        try:
            onnx_info = export_checked(student, data.test_x, student_path).as_dict()
        except OnnxExportError as exc:
            log.warning("student.onnx not kept: %s", exc)
            warnings.append(warning("onnx_export_failed", f"student.onnx was not written: {exc}"))
    with tempfile.TemporaryDirectory(prefix="distill-onnx-") as scratch:
        teacher_path = _teacher_onnx(teacher, data, Path(scratch)) if onnx else None
        onnx_files = {"student": student_path if onnx_info else None, "teacher": teacher_path}
        rows = latency_table({"teacher": teacher, "student": student}, onnx_files, data.test_x, latency_runs)
        sizes = {
            "student_safetensors_bytes": _size(out_dir / STUDENT_WEIGHTS),
            "student_onnx_bytes": _size(student_path) if onnx_info else None,
            "teacher_safetensors_bytes": _size(teacher_weights),
            "teacher_onnx_bytes": _size(teacher_path),
        }
    ratio = None
    if sizes["student_safetensors_bytes"] and sizes["teacher_safetensors_bytes"]:
        ratio = sizes["teacher_safetensors_bytes"] / sizes["student_safetensors_bytes"]
    shipped = {"onnx": onnx_info, "latency": rows, "sizes": sizes, "size_compression_ratio": ratio}
    for model in ("student", "teacher"):
        shipped[f"{model}_latency_ms"] = cpu_batch1_ms(rows, model)
    return shipped, warnings


def cpu_batch1_ms(rows: list[dict[str, Any]], model: str) -> float | None:
    """The headline latency (`<model>_latency_ms`): PyTorch, CPU, batch 1, median."""
    for row in rows:
        if (row["model"], row["runtime"], row["device"], row["batch"]) == (model, "pytorch", "cpu", 1):
            return float(row["median_ms"])
    return None


def _teacher_onnx(teacher: nn.Module, data: DataBundle, folder: Path) -> Path | None:
    """The teacher in ONNX, only to time it under onnxruntime (not an artifact)."""
    path = folder / "teacher.onnx"
    try:
        export_onnx(teacher, data.test_x, path)
    except OnnxExportError as exc:
        log.info("teacher not exportable, no onnxruntime rows for it: %s", exc)
        return None
    return path


def _size(path: Path | None) -> int | None:
    return path.stat().st_size if path is not None and path.is_file() else None
