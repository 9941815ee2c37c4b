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
import re
import struct
from pathlib import Path

import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import WeightsError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
KEY_PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS_MAX_HEADER_BYTES = 100 * 1024 * 1024


SUPPORTED_FORMATS = ("safetensors", "a PyTorch state dict (.pt/.pth, torch.save)",
                     "a torch.export program (.pt2, torch.export.save)")
SHOWN_KEYS = 5  # tensors named per kind in a mismatch message
PROGRAM_HINT = ("a model whose code is not in timm or torchvision can be uploaded as a torch.export program "
                "(.pt2) without arch: see 'Bring a teacher from your own code' in the README")
_FORMAT_NAMES = {
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "pt2": "a torch.export program (.pt2), which is its own architecture: give it without an architecture",
    "zip": "a zip archive that is not a PyTorch file",
    "unknown": "not a weights file",
}


def is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with path.open("rb") as handle:
        prefix = handle.read(9)
    if len(prefix) < 9:
        return False
    (header_bytes,) = struct.unpack("<Q", prefix[:8])
    return 0 < header_bytes <= SAFETENSORS_MAX_HEADER_BYTES and prefix[8:9] == b"{"


def weights_format(path: Path) -> str:
    """What a file is, from its first bytes (and a zip's member names), never from its name:
    "safetensors", "pytorch" (torch.save, zip or legacy pickle), "pt2", "torchscript", "zip" or "unknown".

    A file whose ninth byte opens a JSON object is safetensors even when its header length is corrupt,
    so that such a file is reported as a broken safetensors file rather than as something torch cannot read."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): torch.save's legacy format
        return "pytorch"
    return "unknown"


def _zip_format(path: Path) -> str:
    import zipfile

    from core.models.exported import is_exported_program

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "pytorch"  # a truncated torch.save zip: torch.load says where it breaks
    if is_exported_program(path):
        return "pt2"
    if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    return "pytorch" if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names) else "zip"


def read_state_dict(path: Path, field: str = "teacher.weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or weights-only PyTorch file, unwrapped and without wrapper prefixes.

    Any unreadable, truncated, code-running or tensor-less file is a WeightsError naming `field` that
    says what the file is and what was expected; torch's own text (which advises loading with
    weights_only=False) never reaches the message.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError("the weights file does not exist", field=field)
    found = weights_format(path)
    if found == "safetensors":
        state = _read_safetensors(path, field)
    elif found == "pytorch":
        state = _unwrap(_read_torch(path, field), field)
    else:
        raise WeightsError(f"{_FORMAT_NAMES[found]}; supported: {', '.join(SUPPORTED_FORMATS)}", field=field)
    return _strip_prefixes(state)


def _read_safetensors(path: Path, field: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"a safetensors file with a corrupt header or truncated data ({reason}); expected the "
                           "8-byte header length, a JSON header and the tensors' bytes as safetensors writes them",
                           field=field) from exc


def _read_torch(path: Path, field: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it refers to {refused.group(1)}" if refused else "it holds objects other than tensors"
        raise WeightsError(
            f"a PyTorch pickle that is not weights-only (not a plain state dict): {what}, which is refused (only tensors and plain "
            "containers are read, nothing in the file runs); save model.state_dict() or safetensors",
            field=field,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: torch raises many types (zip, EOF...)
        raise WeightsError("a PyTorch file that cannot be read (truncated or corrupt); expected a complete "
                           "torch.save file", field=field) from exc


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
    expected = {key: value.shape for key, value in model.state_dict().items()}
    if (problem := state_mismatch(expected, state)) is not None:
        raise WeightsError(f"the weights do not fit the architecture: {problem}", field=field)
    model.load_state_dict(state, strict=True)
    return model


def state_mismatch(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], shapes: bool = True) -> str | None:
    """How `state` misses the model's tensors `expected` (by name, and by shape when `shapes`), in counts
    with at most SHOWN_KEYS names each and the pointer to the torch.export route; None when it fits."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(shape)}" for key, shape in expected.items()
                 if shapes and key in state and tuple(state[key].shape) != tuple(shape)]
    parts = [f"{len(keys)} {kind} ({_shown(keys)})" for kind, keys in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped: file vs model", misshaped)) if keys]
    if not parts:
        return None
    return f"{len(expected)} tensors expected; {'; '.join(parts)}. {PROGRAM_HINT[0].upper()}{PROGRAM_HINT[1:]}"


def _shown(keys: list[str]) -> str:
    more = len(keys) - SHOWN_KEYS
    return ", ".join(keys[:SHOWN_KEYS]) + (f" and {more} more" if more > 0 else "")


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
    base = probe_shapes(arch, 2, 1)
    num_classes = _solve(state, base, probe_shapes(arch, 3, 1), 2, last=True)
    in_channels = _solve(state, base, probe_shapes(arch, 2, 2), 1, last=False)
    return num_classes, in_channels


def key_mismatch(arch: str, state: dict[str, torch.Tensor]) -> str | None:
    """The mismatch of `state`'s tensor names with `arch`'s (whatever the head size), or None: checked
    before the class count is read, so a state dict of another architecture is never reported as an
    unreadable class count."""
    return state_mismatch(probe_shapes(arch, 2, 1), state, shapes=False)


def probe_shapes(arch: str, num_classes: int, in_channels: int) -> dict[str, torch.Size]:
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
