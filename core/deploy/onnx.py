"""ONNX export of a trained model, kept only when onnxruntime reproduces PyTorch.

A student that cannot leave PyTorch is hard to deploy, so every job tries to write
`student.onnx` with the dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`,
batch axis dynamic). A file that merely loads is not enough: it must pass
`onnx.checker` and, run by onnxruntime's CPU provider on every test image, give
logits within `ONNX_TOLERANCE` of PyTorch's (fp32, both on the CPU) and the same
top-1 class on every image. An architecture that fails any of this gives a
warning and no file, never a failed job: the PyTorch weights are still good.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.models import predict_logits
from core.redact import exception_text

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4  # max |logit difference|, fp32
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")
CHECK_BATCH = 256  # onnxruntime batches in the check: also exercises the dynamic batch axis (last batch smaller)


class OnnxExportError(Exception):
    """The model could not be exported, or its export does not reproduce PyTorch."""


@dataclass
class OnnxCheck:
    """What `metrics.json` says about a kept ONNX file."""

    file: str
    size_bytes: int
    opset: int
    max_abs_diff: float
    tolerance: float
    top1_agreement: float
    images: int
    export_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's passes log every rewrite at INFO; a job log wants one line per export."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write `model` (on a CPU copy, eval mode) as ONNX with a dynamic batch axis.

    The example batch has two images: tracing with one would let the exporter specialise
    the batch size to 1. Raises OnnxExportError with the exporter's first line on failure.
    """
    cpu_model = copy.deepcopy(model).cpu().eval()
    example = example[:2].detach().cpu().float()
    if len(example) < 2:
        example = example.repeat(2, 1, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                cpu_model,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                external_data=False,
                verbose=False,
            )
            if program is None:
                raise OnnxExportError("the exporter returned no program")
            program.save(str(tmp), external_data=False)
    except OnnxExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; each means "not exportable"
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(_first_line(exc)) from exc
    tmp.replace(path)


def onnx_session(path: Path, threads: int | None = None, providers: list[str] | None = None) -> Any:
    """An onnxruntime session; `threads` defaults to torch's, so latency comparisons are like for like."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_logits(session: Any, x: torch.Tensor, batch_size: int = CHECK_BATCH) -> np.ndarray:
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: x[i : i + batch_size].cpu().numpy().astype(np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(chunks)


def check_onnx(path: Path, model: nn.Module, images: torch.Tensor, tolerance: float = ONNX_TOLERANCE) -> OnnxCheck:
    """Validate the file and compare onnxruntime with PyTorch (CPU, fp32) on `images`.

    Raises OnnxExportError when the checker refuses the file, the logits differ by more than
    `tolerance`, or any image's top-1 class differs.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path), load_external_data=False)
        session = onnx_session(path)
        ours = onnx_logits(session, images)
    except Exception as exc:  # noqa: BLE001 - checker and runtime errors alike mean "not usable"
        raise OnnxExportError(f"the exported file does not run: {_first_line(exc)}") from exc
    reference = predict_logits(copy.deepcopy(model).cpu(), images.cpu(), torch.device("cpu")).numpy()
    if ours.shape != reference.shape:
        raise OnnxExportError(f"onnxruntime gives logits of shape {ours.shape}, PyTorch {reference.shape}")
    max_abs_diff = float(np.abs(ours - reference).max()) if reference.size else 0.0
    agreement = float((ours.argmax(axis=1) == reference.argmax(axis=1)).mean()) if len(reference) else 1.0
    if not max_abs_diff <= tolerance:  # also catches NaN
        raise OnnxExportError(f"onnxruntime logits differ from PyTorch by up to {max_abs_diff:.3g} (> {tolerance:g})")
    if agreement < 1.0:
        raise OnnxExportError(f"onnxruntime and PyTorch disagree on top-1 for {1.0 - agreement:.2%} of test images")
    opset = max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    return OnnxCheck(
        file=path.name, size_bytes=path.stat().st_size, opset=int(opset), max_abs_diff=max_abs_diff,
        tolerance=tolerance, top1_agreement=agreement, images=len(images), export_seconds=0.0,
    )


def export_checked(model: nn.Module, images: torch.Tensor, path: Path) -> OnnxCheck:
    """Export, then check; on any failure the file is removed and OnnxExportError raised."""
    started = time.perf_counter()
    export_onnx(model, images, path)
    try:
        check = check_onnx(path, model, images)
    except OnnxExportError:
        path.unlink(missing_ok=True)
        raise
    check.export_seconds = time.perf_counter() - started
    log.info("exported %s: max |logit diff| %.2g on %d images, %.1fs", path.name, check.max_abs_diff,
             check.images, check.export_seconds)
    return check


def _first_line(exc: BaseException) -> str:
    """The exporter's first line, scrubbed by the one rule (metrics are served: never a server path)."""
    return f"{type(exc).__name__}: {exception_text(exc)}"[:300]
