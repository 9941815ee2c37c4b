"""The same small photo set three ways: as an ImageFolder prefix in a bucket, as .tar shards, and as a zip."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
from PIL import Image

CLASSES = ("c0", "c1")


def photos(train_per_class: int = 16, val_per_class: int = 6) -> dict[str, bytes]:
    """{"train/c0/t000.png": png bytes, ..., "val/c1/v005.png": ...}: class 1 is brighter, so it is learnable."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                pixels = (rng.integers(0, 200, (20, 20, 3)) + 30 * label).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                files[f"{split}/{name}/{name}-{split[0]}{i:03d}.png"] = buffer.getvalue()
    return files


def put_image_folder(client, bucket: str, prefix: str, files: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{key}", Body=data)


def shards(files: dict[str, bytes], per_shard: int = 10) -> dict[str, bytes]:
    """WebDataset-style shards of `files`: train-000.tar, ... and val-000.tar, each sample <key>.png + <key>.cls."""
    out: dict[str, bytes] = {}
    for split in ("train", "val"):
        samples = sorted((key, data) for key, data in files.items() if key.startswith(f"{split}/"))
        for n, start in enumerate(range(0, len(samples), per_shard)):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                for key, data in samples[start : start + per_shard]:
                    _, label, name = key.split("/")
                    stem = name.rsplit(".", 1)[0]
                    for member, payload in ((f"{stem}.png", data), (f"{stem}.cls", label.encode())):
                        info = tarfile.TarInfo(member)
                        info.size = len(payload)
                        archive.addfile(info, io.BytesIO(payload))
            out[f"{split}-{n:03d}.tar"] = buffer.getvalue()
    return out


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, data in files.items():
            archive.writestr(key, data)
    return buffer.getvalue()
