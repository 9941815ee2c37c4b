"""Weights I/O: safetensors, or PyTorch `.pt/.pth` state dicts read without unpickling code.

What people save: `torch.save(model.state_dict(), "m.pth")`, a training checkpoint
`{"state_dict": ...}` or `{"model": ...}`, a DataParallel/DDP model (`module.` key
prefix) or a `torch.compile`d one (`_orig_mod.`), or safetensors. All are read
here into one plain `{key: tensor}` dict. PyTorch files go through
`torch.load(weights_only=True)`, whose unpickler only rebuilds tensors and plain
containers: a pickle that would run code is refused, never executed.

Our own outputs are always safetensors (`save_weights`).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import WeightsError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
KEY_PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS_MAX_HEADER_BYTES = 100 * 1024 * 1024


def is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with path.open("rb") as handle:
        prefix = handle.read(9)
    if len(prefix) < 9:
        return False
    (header_bytes,) = struct.unpack("<Q", prefix[:8])
    return 0 < header_bytes <= SAFETENSORS_MAX_HEADER_BYTES and prefix[8:9] == b"{"


def read_state_dict(path: Path, field: str = "teacher.weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or weights-only PyTorch file, unwrapped and without wrapper prefixes.

    Any unreadable, truncated, code-running or tensor-less file is a WeightsError naming `field`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError("the weights file does not exist", field=field)
    if is_safetensors(path):
        state = _read_safetensors(path, field)
    else:
        state = _unwrap(_read_torch(path, field), field)
    return _strip_prefixes(state)


def _read_safetensors(path: Path, field: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"not a readable safetensors file: {exc}", field=field) from exc


def _read_torch(path: Path, field: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not weights-only"
        raise WeightsError(
            "not a weights-only PyTorch file (pickled code or objects are refused; save model.state_dict() "
            f"or use safetensors): {reason}", field=field,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: torch raises many types (zip, safetensors, EOF...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"not a readable safetensors or PyTorch weights file (truncated?): {reason}",
                           field=field) from exc


def _is_state(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap(loaded: object, field: str) -> dict[str, torch.Tensor]:
    """A state dict itself, or the one inside a common checkpoint wrapper; non-tensor entries are dropped."""
    if _is_state(loaded):
        return dict(loaded)  # type: ignore[arg-type]
    if isinstance(loaded, dict):
        for key in WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise WeightsError(
        "the file holds no state dict (expected tensors by name, or a {'state_dict': ...} / {'model': ...} "
        "checkpoint)", field=field,
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in KEY_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def save_weights(model: nn.Module, path: Path) -> None:
    """safetensors, so that downloads load without pickle code execution."""
    save_state(model.state_dict(), path)


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], field: str = "teacher.weights") -> nn.Module:
    """Load `state` strictly into `model`; a key or shape mismatch is a WeightsError, not a crash."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "state dict mismatch")
        raise WeightsError(f"weights do not fit the architecture: {detail[:400]}", field=field) from exc
    return model


def load_weights(model: nn.Module, path: Path, field: str = "teacher.weights") -> nn.Module:
    """Read (safetensors or weights-only .pt/.pth) and load strictly into `model`."""
    return load_state(model, read_state_dict(Path(path), field), field)


def weights_dims(arch: str, state: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(num_classes, in_channels) the weights were saved with, read from the shapes that depend on them.

    One rule for every family, whatever its head (a linear layer, a 1x1 B-cos convolution with
    `max_out` units per class, a conv stack, a transformer's head): build `arch` empty (on the
    meta device when the builder allows it, so nothing is allocated) with 2 and with 3 classes,
    and with 1 and 2 input channels; a tensor whose shape differs between the two says how
    its size grows with the count (`size = constant + per_unit * count`), and solving that
    for the uploaded tensor gives the count. The class count is read from the last such
    tensor (the classifier), the channels from the first (the stem; B-cos models: the
    encoder's statistics). None when the state lacks those tensors or does not solve to a
    whole number.
    """
    base = _probe_shapes(arch, 2, 1)
    num_classes = _solve(state, base, _probe_shapes(arch, 3, 1), 2, last=True)
    in_channels = _solve(state, base, _probe_shapes(arch, 2, 2), 1, last=False)
    return num_classes, in_channels


def _probe_shapes(arch: str, num_classes: int, in_channels: int) -> dict[str, torch.Size]:
    from core.models.registry import build_model

    try:
        with torch.device("meta"):
            probe = build_model(arch, num_classes, in_channels, image_size=None)
    except Exception:  # noqa: BLE001 - some builders read values at init (e.g. `.item()`): build for real
        probe = build_model(arch, num_classes, in_channels, image_size=None)
    return {key: value.shape for key, value in probe.state_dict().items()}


def _solve(
    state: dict[str, torch.Tensor], low: dict[str, torch.Size], high: dict[str, torch.Size], count: int, last: bool
) -> int | None:
    """The count `state` was saved with, from the tensors whose shape grows from `low` (count) to `high` (count+1)."""
    keys = [key for key in low if key in high and len(low[key]) == len(high[key]) and low[key] != high[key]]
    for key in reversed(keys) if last else keys:
        saved = state.get(key)
        if saved is None or saved.dim() != len(low[key]):
            continue
        dim = next(d for d in range(len(low[key])) if low[key][d] != high[key][d])
        per_unit = high[key][dim] - low[key][dim]
        constant = low[key][dim] - count * per_unit
        units, remainder = divmod(saved.shape[dim] - constant, per_unit)
        return int(units) if remainder == 0 and units > 0 else None
    return None
