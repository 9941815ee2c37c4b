"""Helpers for the API tests: real files (weights, images, archives) built in memory, broker inspection."""

from __future__ import annotations

import io
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.models import build_model, save_weights
from store.settings import Settings


def digits_spec(name: str = "digits-kd", **changes: Any) -> dict[str, Any]:
    """The smallest valid spec: built-in digits, tiny models, one epoch."""
    spec: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "digits", "image_size": 8},
        "teacher": {"arch": "cnn", "epochs": 1},
        "student": {"arch": "cnn"},
        "method": "kd",
        "training": {"epochs": 1, "batch_size": 32},
        "report": {"heatmaps": 2, "latency_runs": 1},
    }
    spec.update(changes)
    return spec


def queued_messages(settings: Settings) -> list[Path]:
    """Messages waiting in the kombu filesystem transport's queue folder (one file per sent task)."""
    folder = settings.broker_folder / "queue"
    return sorted(folder.glob("*.msg")) if folder.is_dir() else []


def weights_bytes(tmp_path: Path, arch: str, num_classes: int, in_channels: int) -> bytes:
    path = tmp_path / f"{arch}-{num_classes}-{in_channels}.safetensors"
    save_weights(build_model(arch, num_classes, in_channels), path)
    return path.read_bytes()


class TouchOnLoad:
    """Unpickling this object creates `marker`: proof that a pickle's payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def code_running_pickle(marker: Path) -> bytes:
    return pickle.dumps({"conv.weight": TouchOnLoad(marker)})


def png_bytes(value: int = 128, size: int = 8, mode: str = "L") -> bytes:
    from PIL import Image

    channels = 1 if mode == "L" else 3
    pixels = np.full((size, size) if channels == 1 else (size, size, channels), value, dtype=np.uint8)
    pixels[0, 0] = 255 - value  # not flat, so the picture is a real image
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A zip with exactly these member names (no normalisation: hostile names stay hostile)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix, so external_attr carries the file mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def image_folder_zip(classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, test: bool = True,
                     prefix: str = "") -> bytes:
    members: dict[str, bytes] = {}
    for label, name in enumerate(classes):
        for i in range(per_class):
            members[f"{prefix}train/{name}/{i}.png"] = png_bytes(40 + 60 * label + i)
            if test:
                members[f"{prefix}test/{name}/{i}.png"] = png_bytes(45 + 60 * label + i)
    return zip_bytes(members)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def multipart_body(fields: dict[str, str], filename: str, data: bytes, boundary: str = "testboundary7d9") -> bytes:
    """A multipart/form-data body built by hand, to send in chunks without a Content-Length."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)
