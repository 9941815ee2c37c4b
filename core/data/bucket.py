"""Datasets that stay in an S3-compatible bucket: list them once, copy their objects to a local tree on demand.

Two layouts under `s3://bucket/prefix/`:

- an ImageFolder tree: `train/<class>/<image>` plus an optional held-out split in the
  first of `val/`, `valid/`, `validation/`, `test/` (or `<class>/<image>` alone, all training);
- WebDataset-style shards: `train-*.tar` and optionally `val-*.tar` (or `valid`, `validation`,
  `test`), each sample two members `<key>.jpg|jpeg|png` and `<key>.cls` (its class name or number).

`list_objects` is one paginated listing (keys, sizes, ETags); `summarise` turns it into what a
registration answers (classes, counts, split, bytes), reading the shards' member headers once.
`fetch_tree` writes the objects as a local ImageFolder tree, the form every other part of the
engine reads (and which the decoded-once image store then keys on). Errors are DataErrors
naming `field` (`uri` at registration, `dataset.id` in a job).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field as dc_field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from core.data.sources import IMAGE_SUFFIXES
from core.data.splits import TEST_SPLIT_NAMES
from core.errors import DataError

SHARD_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class BucketObject:
    key: str  # relative to the prefix
    size: int
    etag: str


@dataclass
class BucketSummary:
    layout: str  # "imagefolder" | "shards"
    class_names: list[str]
    num_train: int
    num_test: int
    test_split: str | None
    size_bytes: int
    objects: list[BucketObject] = dc_field(default_factory=list)
    in_channels: int = 3  # the first training image's: 1 when it is grayscale (the engine's rule)


def parse_uri(uri: str, field: str = "uri") -> tuple[str, str]:
    """`s3://bucket/prefix/` -> (bucket, "prefix/"); DataError naming `field` for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise DataError("the dataset uri must look like s3://bucket/prefix/", field=field)
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if ".." in PurePosixPath(prefix).parts:
        raise DataError("the dataset uri's prefix must not contain '..'", field=field)
    return parsed.netloc, prefix


def s3_client(credentials: dict[str, str] | None = None):
    """A boto3 S3 client on the service's S3-compatible settings (AWS_* variables), or on given credentials."""
    import boto3
    from botocore.config import Config

    keys = {}
    if credentials:
        keys = {"aws_access_key_id": credentials.get("access_key_id"),
                "aws_secret_access_key": credentials.get("secret_access_key")}
    return boto3.client(
        "s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}), **keys,
    )


def list_objects(client, uri: str, field: str = "uri") -> list[BucketObject]:
    """Every object under the uri's prefix (one paginated listing); DataError when the bucket cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_uri(uri, field)
    objects: list[BucketObject] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(prefix):]
                if key and not key.endswith("/"):
                    objects.append(BucketObject(key, int(item["Size"]), str(item.get("ETag", "")).strip('"')))
    except (ClientError, BotoCoreError) as exc:
        raise DataError(f"cannot read the bucket '{bucket}': {_reason(exc)}", field=field) from None
    if not objects:
        raise DataError(f"nothing found under {uri}", field=field)
    return objects


def _reason(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    return str(error.get("Code") or type(exc).__name__)


def _image_folder_splits(objects: list[BucketObject]) -> tuple[str | None, str | None]:
    """(train folder or None for a flat `<class>/<image>` tree, held-out folder or None)."""
    tops = {obj.key.split("/", 1)[0] for obj in objects if "/" in obj.key}
    if "train" not in tops:
        return None, None
    return "train", next((name for name in TEST_SPLIT_NAMES if name in tops), None)


def _shard_split(key: str) -> str | None:
    name = PurePosixPath(key).name
    if "/" in key or not name.endswith(".tar"):
        return None
    head = name.split("-", 1)[0]
    return head if head == "train" or head in TEST_SPLIT_NAMES else None


def summarise(client, uri: str, objects: list[BucketObject], field: str = "uri") -> BucketSummary:
    """Classes, counts, held-out split and total bytes of a listed prefix, in either layout."""
    size = sum(obj.size for obj in objects)
    shards = [obj for obj in objects if _shard_split(obj.key)]
    if shards:
        counts: dict[str, int] = {}
        classes: set[str] = set()
        first: bytes | None = None
        for shard in sorted(shards, key=lambda obj: obj.key):
            split = _shard_split(shard.key) or "train"
            for _, label, data in shard_samples(client, uri, shard.key, field):
                classes.add(label)
                counts[split] = counts.get(split, 0) + 1
                first = data if first is None and split == "train" else first
        test_split = next((name for name in TEST_SPLIT_NAMES if counts.get(name)), None)
        names = sorted(classes)  # the engine's order: the copied tree's class folders, sorted (torchvision's rule)
        _check_classes(names, counts.get("train", 0), field)
        return BucketSummary("shards", names, counts.get("train", 0), counts.get(test_split, 0) if test_split else 0,
                             test_split, size, objects, _channels(first, field))
    train, test = _image_folder_splits(objects)
    images = [obj for obj in objects if PurePosixPath(obj.key).suffix.lower() in IMAGE_SUFFIXES]
    depth = 3 if train else 2
    train_images = [o for o in images if len(o.key.split("/")) == depth and (not train or o.key.startswith("train/"))]
    names = sorted({o.key.split("/")[depth - 2] for o in train_images})
    _check_classes(names, len(train_images), field)
    test_count = sum(1 for o in images if test and o.key.startswith(f"{test}/") and len(o.key.split("/")) == 3
                     and o.key.split("/")[1] in names)
    first = min(train_images, key=lambda obj: obj.key)
    return BucketSummary("imagefolder", names, len(train_images), test_count, test, size, objects,
                         _channels(_get(client, uri, first.key, field), field))


def _get(client, uri: str, key: str, field: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_uri(uri, field)
    try:
        return client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise DataError(f"cannot read {key}: {_reason(exc)}", field=field) from None


def _channels(image: bytes | None, field: str) -> int:
    """1 or 3: the channels the engine gives a set whose first training image is `image`."""
    import io

    from PIL import Image, UnidentifiedImageError

    from core.models.compat import image_channels

    try:
        with Image.open(io.BytesIO(image or b"")) as first:
            return image_channels(first.mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"the first training image cannot be decoded: {exc}", field=field) from None


def _check_classes(names: list[str], num_train: int, field: str) -> None:
    if len(names) < 2 or num_train == 0:
        raise DataError(f"found {len(names)} classes with {num_train} training images under the prefix; "
                        "a dataset needs train/<class>/<image> (at least 2 classes) or train-*.tar shards",
                        field=field)


def shard_samples(client, uri: str, key: str, field: str) -> Iterator[tuple[str, str, bytes]]:
    """(sample key, class, image bytes) of one .tar shard, streamed (members are read in order, once)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_uri(uri, field)
    try:
        body = client.get_object(Bucket=bucket, Key=prefix + key)["Body"]
    except (ClientError, BotoCoreError) as exc:
        raise DataError(f"cannot read {key}: {_reason(exc)}", field=field) from None
    images: dict[str, tuple[str, bytes]] = {}
    labels: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=body, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                stem, _, suffix = PurePosixPath(member.name).name.partition(".")
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                if suffix == "cls":
                    labels[stem] = data.decode("utf-8", "replace").strip()
                elif f".{suffix.lower()}" in SHARD_IMAGE_SUFFIXES:
                    images[stem] = (suffix.lower(), data)
    except tarfile.TarError as exc:
        raise DataError(f"{key} is not a readable tar shard: {exc}", field=field) from None
    for stem in sorted(images):
        if stem in labels:
            yield f"{stem}.{images[stem][0]}", labels[stem], images[stem][1]


def fetch_tree(client, uri: str, summary: BucketSummary, dest: Path, field: str = "dataset.id") -> Path:
    """Copy the dataset's objects into `dest` as an ImageFolder tree (train/<class>/..., <split>/<class>/...)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_uri(uri, field)
    if summary.layout == "shards":
        for obj in summary.objects:
            split = _shard_split(obj.key)
            if split is None:
                continue
            for name, label, data in shard_samples(client, uri, obj.key, field):
                target = dest / split / _safe(label) / _safe(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return dest
    for obj in summary.objects:
        if PurePosixPath(obj.key).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        target = dest.joinpath(*(_safe(part) for part in obj.key.split("/")))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, prefix + obj.key, str(target))
        except (ClientError, BotoCoreError) as exc:
            raise DataError(f"cannot read {obj.key} from the bucket: {_reason(exc)}", field=field) from None
    return dest


def _safe(part: str) -> str:
    """A path component from a bucket key or a label: no separators, no '..'."""
    cleaned = part.replace("/", "_").replace("\\", "_")
    return "_" if cleaned in ("", ".", "..") else cleaned
