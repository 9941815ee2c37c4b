"""The rules an uploaded archive (.zip or .npz) must pass before and while it is unpacked, in one place.

Nothing in an archive is trusted. From the zip's central directory, before one byte
is written: the member count, every name (zip-slip: absolute paths, `..`, symbolic
links, NUL), the kind of every member, the total unpacked size and the compression
ratio (of the whole archive and of each member over `RATIO_FLOOR_BYTES`) are
checked. While writing, each member is cut off at its declared size and at what is
left of the budget, since a header can lie.

Member kinds, decided here once: images (core.data.IMAGE_SUFFIXES) are written;
known metadata (README, LICENSE, .txt, .md, .json, .csv, ...), macOS resource forks
and dot-files are skipped (never written); anything else is refused with a 422 naming
the member, because a dataset that carries unknown files is more likely a mistake
(or a payload) than data. A .npz may hold only `.npy` members.
"""

from __future__ import annotations

import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from api.services.errors import UnsafeArchive
from core.data import IMAGE_SUFFIXES
from core.errors import DataError, is_storage_full
from core.redact import exception_text
from store.settings import Settings

MAX_ARCHIVE_MEMBERS = 500_000
RATIO_FLOOR_BYTES = 1024 * 1024  # smaller members are not judged alone: a tiny header compresses well
METADATA_SUFFIXES = frozenset({".txt", ".md", ".rst", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml"})
METADATA_STEMS = frozenset({"readme", "license", "licence", "notice", "citation", "authors", "changelog"})
_COPY_CHUNK_BYTES = 1024 * 1024
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """The bounds one archive must stay within (from Settings: DISTILL_MAX_UNPACKED_MB, DISTILL_MAX_ZIP_RATIO)."""

    max_unpacked_bytes: int
    max_ratio: float
    max_members: int = MAX_ARCHIVE_MEMBERS

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(max_unpacked_bytes=settings.max_unpacked_bytes, max_ratio=settings.max_zip_ratio)


@dataclass(frozen=True)
class Member:
    """One member that will be written: its directory entry and its checked path components."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]


def _unsafe(message: str) -> UnsafeArchive:
    return UnsafeArchive(message, "file")


def _invalid(message: str) -> DataError:
    return DataError(message, "file")


def member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path components, or UnsafeArchive when it could escape the target folder."""
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise _unsafe(f"archive member '{info.filename}' is a symbolic link")
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        raise _unsafe(f"archive member '{info.filename}' has an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _unsafe(f"archive member '{info.filename}' climbs out of the archive with '..'")
    if any("\x00" in part for part in parts):
        raise _unsafe(f"archive member '{info.filename}' has a NUL in its name")
    return parts


def member_kind(parts: tuple[str, ...]) -> str:
    """'image' (written), 'skipped' (metadata, resource forks, dot-files: not written) or 'other' (refused)."""
    if not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
        return "skipped"
    name = PurePosixPath(parts[-1])
    if name.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if name.suffix.lower() in METADATA_SUFFIXES or name.stem.lower() in METADATA_STEMS:
        return "skipped"
    return "other"


def check_sizes(members: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    """Total declared size and compression ratios, from the directory alone (nothing written yet)."""
    declared = sum(info.file_size for info in members)
    packed = sum(info.compress_size for info in members)
    if declared > limits.max_unpacked_bytes:
        raise _unsafe(f"the archive unpacks to {declared} bytes, over the {limits.max_unpacked_bytes} byte limit")
    for info in members:  # the member first: the message can name it
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise _unsafe(f"archive member '{info.filename}' unpacks to {info.file_size / max(info.compress_size, 1):.0f}"
                          f" times its packed size (max {limits.max_ratio:g})")
    if declared > RATIO_FLOOR_BYTES and declared > limits.max_ratio * max(packed, 1):
        raise _unsafe(f"the archive unpacks to {declared / max(packed, 1):.0f} times its packed size "
                      f"(max {limits.max_ratio:g})")


def plan_zip(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[Member]:
    """The image members to write, after every rule that the directory can decide; refuses before writing."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise _unsafe(f"the archive has {len(infos)} members (max {limits.max_members})")
    checked = [(info, member_parts(info)) for info in infos]  # every name, before anything else
    check_sizes(infos, limits)
    planned: list[Member] = []
    for info, parts in checked:
        if info.is_dir():
            continue
        kind = member_kind(parts)
        if kind == "other":
            raise _invalid(f"archive member '{info.filename}' is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))})"
                           " nor known metadata; remove it")
        if kind == "image":
            planned.append(Member(info, parts))
    return planned


def check_npz_directory(path: Path, limits: ArchiveLimits) -> None:
    """A .npz is a zip of .npy arrays: the same size and ratio bounds, and nothing but .npy members."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise _invalid(f"cannot read the .npz: {exception_text(exc, {path.parent: ''})}") from exc
    if len(infos) > limits.max_members:
        raise _unsafe(f"the .npz has {len(infos)} members (max {limits.max_members})")
    for info in infos:
        if not info.filename.endswith(".npy") or "/" in info.filename.replace("\\", "/"):
            raise _invalid(f".npz member '{info.filename}' is not a top-level .npy array")
    check_sizes(infos, limits)


def extract_member(archive: zipfile.ZipFile, member: Member, target: Path, budget_bytes: int) -> int:
    """Copy one member, counting real bytes; cut off past its declared size or the budget (lying headers)."""
    info = member.info
    allowed = min(info.file_size, budget_bytes)
    copied = 0
    try:
        with archive.open(info) as source, target.open("xb") as sink:
            for chunk in _chunks(source):
                copied += len(chunk)
                if copied > allowed:
                    why = "its declared size" if copied > info.file_size else "the allowed unpacked size"
                    raise _unsafe(f"archive member '{info.filename}' unpacks past {why}; cut off")
                sink.write(chunk)
    except FileExistsError as exc:
        raise _unsafe(f"archive member '{info.filename}' appears twice") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
            ValueError) as exc:
        if is_storage_full(exc):
            raise  # the server's disk, not the archive: 507 (api.errors)
        raise _invalid(f"cannot unpack '{info.filename}': {exception_text(exc, {target.parent: ''})}") from exc
    return copied


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    """The member's bytes a chunk at a time (zipfile itself stops at the declared size and then checks
    the CRC, so a lying header ends as a CRC error; the count above is the rule's own guard)."""
    while chunk := source.read(_COPY_CHUNK_BYTES):
        yield chunk


def unzip(path: Path, extract: Path, limits: ArchiveLimits) -> int:
    """Unpack the archive's images into `extract` under `limits`; the bytes written."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _invalid(f"cannot read the .zip: {exception_text(exc, {path.parent: ''})}") from exc
    with archive:
        planned = plan_zip(archive, limits)
        written = 0
        root = extract.resolve()
        for member in planned:
            target = extract.joinpath(*member.parts)
            if not target.resolve().is_relative_to(root):
                raise _unsafe(f"archive member '{member.info.filename}' resolves outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            written += extract_member(archive, member, target, limits.max_unpacked_bytes - written)
    return written
