"""Where the files of jobs and uploads live: one interface, two backends.

Keys are relative POSIX paths, the same under both backends (`jobs/<id>/student.safetensors`,
`models/<id>.safetensors`, `datasets/<id>/...`), and they are what the SQL rows record:

- `LocalStorage`: a folder (DISTILL_HOME), the embedded default. A key is a file under it.
- `S3Storage`: an S3-compatible bucket (`DISTILL_STORAGE_URL=s3://bucket/prefix`); the
  endpoint and credentials come from the usual AWS variables (`AWS_ENDPOINT_URL`,
  `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`). Workers on several
  machines share it, so nothing of a job lives only on one machine's disk.

The engine works in a local folder. `working_folder` says which: the stored folder itself
(local backend, so syncing is a no-op) or a scratch copy under DISTILL_HOME/cache (S3), which
`pull_prefix` fills from the store and a `FolderSync` pushes back (every epoch's checkpoint,
then the final files).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from core.atomic import atomic_path
from store.settings import Settings

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\\]")


class StorageError(Exception):
    """The store refused or failed an operation (network, permissions, missing bucket)."""


class MissingObject(StorageError):
    """No object under that key."""


def check_key(key: str) -> str:
    """Refuse anything but a plain relative path of safe parts: a key never climbs out of its root."""
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") or _BAD_KEY_CHARS.search(part) for part in parts):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class Storage(Protocol):
    """What api/ and worker/ need from a store of files."""

    kind: str

    def put_file(self, key: str, path: Path) -> None:
        """Copy a local file to `key` (replacing it atomically for readers)."""

    def get_file(self, key: str, path: Path) -> None:
        """Copy `key` to a local file (written to a temporary name, then renamed); MissingObject if absent."""

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks, for streaming a download without holding it in memory."""

    def list_keys(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix` (a folder, ending in '/') with its size in bytes."""

    def delete(self, key: str) -> None:
        """Remove one key (absent is fine)."""

    def presigned_url(self, key: str, expires_s: int, filename: str) -> str | None:
        """A time-limited download URL, or None when the backend cannot make one (local)."""

    def local_path(self, key: str) -> Path | None:
        """The key's own file when the store is a local folder, else None."""


class LocalStorage:
    """Keys are files under `root` (DISTILL_HOME); every path is re-checked to stay inside it."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def local_path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"key {key!r} resolves outside the storage root")
        return path

    def put_file(self, key: str, path: Path) -> None:
        destination = self.local_path(key)
        if Path(path).resolve() == destination:
            return
        with atomic_path(destination) as tmp:  # a reader never sees half a file, even if we are killed
            shutil.copyfile(path, tmp)

    def get_file(self, key: str, path: Path) -> None:
        source = self.local_path(key)
        if not source.is_file():
            raise MissingObject(key)
        if source == Path(path).resolve():
            return
        with atomic_path(Path(path)) as tmp:
            shutil.copyfile(source, tmp)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        source = self.local_path(key)
        if not source.is_file():
            raise MissingObject(key)
        with open(source, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    def list_keys(self, prefix: str) -> dict[str, int]:
        folder = self.local_path(prefix.rstrip("/"))
        if not folder.is_dir():
            return {}
        keys = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.endswith((".part", ".tmp")):
                keys[path.relative_to(self.root).as_posix()] = path.stat().st_size
        return keys

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int, filename: str) -> str | None:
        return None


class S3Storage:
    """An S3-compatible bucket under a key prefix (boto3; endpoint and credentials from AWS_* variables)."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        )

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def _missing(self, error: BaseException) -> bool:
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._name(key))
        except self._errors() as error:
            raise StorageError(f"could not store {key}: {error}") from error

    def get_file(self, key: str, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        try:
            self.client.download_file(self.bucket, self._name(key), str(tmp))
        except self._errors() as error:
            tmp.unlink(missing_ok=True)
            if self._missing(error):
                raise MissingObject(key) from error
            raise StorageError(f"could not fetch {key}: {error}") from error
        tmp.replace(path)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except self._errors() as error:
            if self._missing(error):
                raise MissingObject(key) from error
            raise StorageError(f"could not fetch {key}: {error}") from error
        return _close_after(body)

    def list_keys(self, prefix: str) -> dict[str, int]:
        check_key(prefix.rstrip("/"))
        keys: dict[str, int] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix.rstrip("/") + "/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    keys[item["Key"][len(self.prefix):]] = int(item["Size"])
        except self._errors() as error:
            raise StorageError(f"could not list {prefix}: {error}") from error
        return keys

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except self._errors() as error:
            raise StorageError(f"could not delete {key}: {error}") from error

    def presigned_url(self, key: str, expires_s: int, filename: str) -> str | None:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._name(key),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"'},
            ExpiresIn=expires_s,
        )

    def local_path(self, key: str) -> Path | None:
        return None


def _close_after(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


def storage_from_settings(settings: Settings) -> Storage:
    """The backend DISTILL_STORAGE_URL names: unset or `file:` -> DISTILL_HOME, `s3://bucket/prefix` -> S3."""
    url = settings.storage_url
    if not url:
        return LocalStorage(settings.distill_home)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("DISTILL_STORAGE_URL must name a bucket: s3://bucket/prefix")
        return S3Storage(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    raise ValueError(f"DISTILL_STORAGE_URL: unsupported scheme {parsed.scheme!r} (use s3:// or file://)")


@lru_cache
def _cached_storage(url: str | None, home: Path) -> Storage:
    return storage_from_settings(Settings(DISTILL_HOME=home, DISTILL_STORAGE_URL=url))


def get_storage(settings: Settings) -> Storage:
    """One backend (one boto3 client) per process and configuration."""
    return _cached_storage(settings.storage_url, settings.distill_home)


# ---------------------------------------------------------------------------------------------------------------
# Local working folders and their sync with the store
# ---------------------------------------------------------------------------------------------------------------


def working_folder(storage: Storage, settings: Settings, prefix: str) -> Path:
    """Where this machine works on the files under `prefix`: the stored folder itself, or a scratch cache."""
    own = storage.local_path(prefix.rstrip("/"))
    return own if own is not None else settings.distill_home / "cache" / check_key(prefix.rstrip("/"))


def is_mirror(storage: Storage, folder: Path, prefix: str) -> bool:
    """True when `folder` is the store's own folder for `prefix` (nothing to copy)."""
    own = storage.local_path(prefix.rstrip("/"))
    return own is not None and own == Path(folder).resolve()


def pull_prefix(storage: Storage, prefix: str, folder: Path) -> int:
    """Make `folder` an exact copy of what the store holds under `prefix` (the store is the truth:
    a checkpoint another machine wrote replaces whatever this machine kept). Returns files fetched."""
    if is_mirror(storage, folder, prefix):
        return 0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    base = prefix.rstrip("/") + "/"
    keys = storage.list_keys(base)
    for key in keys:
        storage.get_file(key, folder / key[len(base):])
    return len(keys)


def fetch_cached(storage: Storage, settings: Settings, key_or_prefix: str, folder: bool) -> Path:
    """A local copy of an immutable upload (a model file, or a dataset folder), fetched once per machine."""
    own = storage.local_path(key_or_prefix.rstrip("/"))
    if own is not None:
        return own
    target = working_folder(storage, settings, key_or_prefix)
    done = target.with_name(target.name + ".complete")
    if done.exists():
        return target
    if folder:
        pull_prefix(storage, key_or_prefix, target)
    else:
        storage.get_file(key_or_prefix, target)
    done.touch()
    return target


@dataclass
class FolderSync:
    """Pushes what changed in a local working folder to the store, so another machine can resume it.

    Remembers each file's (size, mtime) as last pushed; files still being written (`.tmp`, `.part`)
    are skipped, and the engine replaces files atomically, so a pushed file is always whole.
    """

    storage: Storage
    folder: Path
    prefix: str
    pushed: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix = self.prefix.rstrip("/") + "/"
        self.active = not is_mirror(self.storage, self.folder, self.prefix)

    def mark_current(self) -> None:
        """Take the folder as it is now as already stored (right after `pull_prefix` filled it)."""
        if self.active:
            self.pushed = {name: self._stamp(self.folder / name) for name in self._local_names()}

    def _local_names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return [
            path.relative_to(self.folder).as_posix()
            for path in sorted(self.folder.rglob("*"))
            if path.is_file() and not path.name.endswith((".tmp", ".part"))
        ]

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def push(self, mirror: bool = False) -> int:
        """Upload new or changed files; with `mirror`, also delete stored keys gone from the folder."""
        if not self.active:
            return 0
        names = self._local_names()
        uploaded = 0
        for name in names:
            try:
                stamp = self._stamp(self.folder / name)
            except FileNotFoundError:  # replaced between listing and reading
                continue
            if self.pushed.get(name) != stamp:
                self.storage.put_file(self.prefix + name, self.folder / name)
                self.pushed[name] = stamp
                uploaded += 1
        if mirror:
            present = set(names)
            for key in self.storage.list_keys(self.prefix):
                if key[len(self.prefix):] not in present:
                    self.storage.delete(key)
            self.pushed = {name: stamp for name, stamp in self.pushed.items() if name in present}
        return uploaded

    def discard_local(self) -> None:
        """Drop the scratch copy once everything is in the store (never the store's own folder)."""
        if self.active:
            shutil.rmtree(self.folder, ignore_errors=True)


def store_file(storage: Storage, key: str, path: Path) -> None:
    """Keep a finished local file (an upload) under `key`; the local copy goes once a remote store has it."""
    storage.put_file(key, path)
    if storage.local_path(key) is None:
        Path(path).unlink(missing_ok=True)


def discard_quietly(storage: Storage, key: str) -> None:
    """Best-effort cleanup on a failure path: the original error is what the caller reports."""
    try:
        storage.delete(key)
    except (StorageError, ValueError) as error:
        logger.warning("could not remove %s after a failure: %s", key, error)


def store_folder(storage: Storage, folder: Path, prefix: str) -> None:
    """Keep a finished local folder (an unpacked dataset) under `prefix`, like `store_file`."""
    sync = FolderSync(storage, folder, prefix)
    sync.push()
    sync.discard_local()
