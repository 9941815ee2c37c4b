"""The dataset upload rule: what an uploaded .zip or .npz must be to become a dataset, and how it is kept.

Nothing in an archive is trusted. Members are unpacked one by one with names
normalised, and refused when they could land outside the target (zip-slip: absolute
paths, `..`, symbolic links, NUL); the member count and the unpacked size are capped
(zip bombs), counting real bytes since declared sizes can lie. A .npz is opened
without pickle, so an object array (which could run code) is refused. Every image is
decoded once, and the dataset is read the way a worker will read it. The result is
staged in a folder of its own and moved into place with one rename.

Problems are `DataError` (`invalid_dataset`) or `UnsafeArchive` (`unsafe_archive`),
both naming `file`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from api.services.errors import UnsafeArchive
from api.services.upload_staging import MIB, ReceivedUpload, new_staging_dir
from core.data import IMAGE_SUFFIXES, find_splits, image_folder_classes, load_dataset
from core.errors import DataError
from core.models.compat import image_channels
from core.spec import DatasetSpec, check_plain_text
from store import repository
from store.models import DatasetRecord
from store.settings import Settings
from store.storage import Storage, store_folder

log = logging.getLogger(__name__)

# An archive may unpack to at most this many times the upload cap (and this many members).
UNPACKED_SIZE_FACTOR = 4
MAX_ARCHIVE_MEMBERS = 500_000
_COPY_CHUNK_BYTES = MIB
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class DatasetUploadForm(BaseModel):
    """The text fields sent next to the `file` part."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200, description="Label; default: the file name.")

    _plain_name = field_validator("name")(classmethod(lambda cls, v: check_plain_text(v)))


@dataclass
class UnpackedDataset:
    """A checked dataset staged under DISTILL_HOME/tmp, ready to be moved to datasets/<id>/."""

    kind: str  # "imagefolder" | "npz"
    root: Path  # the staged tree root (imagefolder) or folder holding data.npz
    data_name: str | None  # "data.npz" for npz; None for a tree
    class_names: list[str]
    in_channels: int
    num_train: int
    num_test: int
    size_bytes: int
    test_split: str | None = None  # the held-out folder found (val, valid, validation, test), "arrays", or None


def _invalid(message: str) -> DataError:
    """The file is not a usable dataset; the client fixes the file, so the error names `file`."""
    return DataError(message, "file")


def _unsafe(message: str) -> UnsafeArchive:
    """The archive tried to escape or overflow; a code of its own, since it may be an attack, not a mistake."""
    return UnsafeArchive(message, "file")


# --- checking and staging -------------------------------------------------------------------------------


def unpack_dataset(upload: ReceivedUpload, *, staging: Path, settings: Settings) -> UnpackedDataset:
    """Check an uploaded .zip (ImageFolder tree) or .npz and stage it under `staging` (an empty folder)."""
    kind = _dataset_kind(upload)
    if kind == "npz":
        return _stage_npz(upload, staging)
    return _stage_image_folder(upload, staging, settings)


def install_dataset(unpacked: UnpackedDataset, destination: Path) -> None:
    """Move the staged dataset into place with one rename: readers see all of it or nothing."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(unpacked.root, destination)


def _dataset_kind(upload: ReceivedUpload) -> str:
    """Which reader applies: the file name says when it can, else the members do (a .npz is a zip of .npy files)."""
    if not zipfile.is_zipfile(upload.path):  # .npz files are zip archives too
        raise _invalid("the file must be a .zip of an ImageFolder tree or a .npz with arrays x and y")
    suffix = PurePosixPath(upload.filename).suffix.lower()
    if suffix in (".npz", ".zip"):
        return suffix[1:]
    with zipfile.ZipFile(upload.path) as archive:
        names = archive.namelist()
    return "npz" if names and all(name.endswith(".npy") for name in names) else "zip"


def _stage_npz(upload: ReceivedUpload, staging: Path) -> UnpackedDataset:
    """Move the .npz into staging and read it as a worker will, so a job never meets a file the upload accepted."""
    target = staging / "data.npz"
    os.replace(upload.path, target)  # same filesystem: a rename, not a copy
    counts = _npz_counts(target)
    try:
        bundle = load_dataset(DatasetSpec(path=str(target), image_size=8), seed=0)
    except DataError as exc:
        raise _invalid(exc.message) from exc
    return UnpackedDataset(kind="npz", root=staging, data_name=target.name, class_names=bundle.class_names,
                           in_channels=bundle.in_channels, num_train=counts[0], num_test=counts[1],
                           size_bytes=target.stat().st_size, test_split="arrays" if counts[1] else None)


def _npz_counts(path: Path) -> tuple[int, int]:
    """Open every array without pickle: an object array (which could run code) is refused here."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            shapes = {key: arrays[key].shape for key in arrays.files}
    except ValueError as exc:  # numpy raises it lazily, per array, for object arrays
        raise _invalid(f".npz arrays must be numeric (object arrays are refused): {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _invalid(f"cannot read the .npz: {exc}") from exc
    if "x" not in shapes or "y" not in shapes:
        raise _invalid(".npz must hold arrays 'x' and 'y' (optional 'x_test', 'y_test')")
    num_test = shapes["x_test"][0] if "x_test" in shapes and "y_test" in shapes and shapes["x_test"] else 0
    return int(shapes["x"][0]) if shapes["x"] else 0, int(num_test)


def _member_parts(info: zipfile.ZipInfo) -> list[str]:
    """The member's path components, or UnsafeArchive when it could escape the target folder."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _unsafe(f"archive member '{info.filename}' is a symbolic link")
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        raise _unsafe(f"archive member '{info.filename}' has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"archive member '{info.filename}' climbs out of the archive with '..'")
    if any("\x00" in part for part in parts):
        raise _unsafe(f"archive member '{info.filename}' has a NUL in its name")
    return parts


def _stage_image_folder(upload: ReceivedUpload, staging: Path, settings: Settings) -> UnpackedDataset:
    """Unpack within the size cap, check every image, then read the tree as a worker will."""
    extract = staging / "tree"
    extract.mkdir()
    written = _unzip(upload, extract, settings.max_upload_mb * MIB * UNPACKED_SIZE_FACTOR)
    root = _tree_root(extract)
    summary = _check_image_tree(root)
    try:
        load_dataset(DatasetSpec(path=str(root), image_size=8), seed=0)  # the worker will read it the same way
    except DataError as exc:
        raise _invalid(exc.message) from exc
    return UnpackedDataset(kind="imagefolder", root=root, data_name=None, class_names=summary[0],
                           in_channels=summary[1], num_train=summary[2], num_test=summary[3], size_bytes=written,
                           test_split=summary[4])


def _unzip(upload: ReceivedUpload, extract: Path, limit_bytes: int) -> int:
    """Unpack the archive into `extract` (every name checked before anything is written); the bytes written."""
    try:
        archive = zipfile.ZipFile(upload.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _invalid(f"cannot read the .zip: {exc}") from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise _unsafe(f"the archive has {len(members)} members (max {MAX_ARCHIVE_MEMBERS})")
        planned = [(info, _member_parts(info)) for info in members]  # refuse before writing anything
        declared = sum(info.file_size for info in members)
        if declared > limit_bytes:
            raise _unsafe(f"the archive unpacks to {declared} bytes, over the {limit_bytes} byte limit")
        written = 0
        for info, parts in planned:
            # macOS resource forks and dot-files are not data (core.data skips hidden folders too).
            if not parts or info.is_dir() or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
                continue
            target = extract.joinpath(*parts)
            if not target.resolve().is_relative_to(extract.resolve()):
                raise _unsafe(f"archive member '{info.filename}' resolves outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            written += _extract_member(archive, info, target, limit_bytes - written)
    return written


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget_bytes: int) -> int:
    """Copy one member, counting real bytes: the declared sizes in a zip can lie."""
    copied = 0
    try:
        with archive.open(info) as source, target.open("xb") as sink:
            while chunk := source.read(_COPY_CHUNK_BYTES):
                copied += len(chunk)
                if copied > budget_bytes:
                    raise _unsafe("the archive unpacks to more than the allowed size")
                sink.write(chunk)
    except FileExistsError as exc:
        raise _unsafe(f"archive member '{info.filename}' appears twice") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        raise _invalid(f"cannot unpack '{info.filename}': {exc}") from exc
    return copied


def _tree_root(extract: Path) -> Path:
    """Skip wrapper folders (a zip of `mydata/` holds `mydata/train/...`)."""
    root = extract
    while not (root / "train").is_dir():
        entries = list(root.iterdir())
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
            continue
        break
    return root


def _check_image_tree(root: Path) -> tuple[list[str], int, int, int, str | None]:
    """(class_names, in_channels, num_train, num_test, held-out folder name) after every image passed verify()."""
    train_root, test_root = find_splits(root)
    class_names = image_folder_classes(train_root)
    if len(class_names) < 2:
        raise _invalid(f"an ImageFolder tree needs at least 2 class folders under train/, found {len(class_names)}")
    channels: list[int] = []
    num_train = _verify_split(train_root, class_names, channels, require_every_class=True)
    num_test = 0
    if test_root is not None:
        unknown = sorted(set(image_folder_classes(test_root)) - set(class_names))
        if unknown:
            raise _invalid(f"{test_root.name}/ has classes that train/ lacks: {', '.join(unknown)}")
        num_test = _verify_split(test_root, class_names, channels, require_every_class=False)
    return class_names, (channels[0] if channels else 3), num_train, num_test, test_root.name if test_root else None


def _verify_split(split_root: Path, class_names: list[str], channels: list[int], require_every_class: bool) -> int:
    """Decode every image of one split once (PIL's verify); the first image's mode gives the channel count."""
    from PIL import Image

    count = 0
    for name in class_names:
        folder = split_root / name
        images = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if require_every_class and not images:
            raise _invalid(f"class folder '{split_root.name}/{name}' has no images")
        for file in images:
            where = f"{split_root.name}/{name}/{file.name}"
            try:
                with Image.open(file) as img:
                    if not channels:
                        channels.append(image_channels(img.mode))
                    img.verify()
            except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
                raise _invalid(f"image {where} cannot be decoded: {exc}") from exc
            count += 1
    return count


# --- keeping it -----------------------------------------------------------------------------------------


def _dataset_record(dataset_id: str, unpacked: UnpackedDataset, name: str) -> DatasetRecord:
    """The row: what jobs need to check a spec against this dataset (api.services.spec_checks) without opening it."""
    relpath = f"datasets/{dataset_id}" + (f"/{unpacked.data_name}" if unpacked.data_name else "")
    return DatasetRecord(
        id=dataset_id,
        name=name,
        kind=unpacked.kind,
        num_classes=len(unpacked.class_names),
        in_channels=unpacked.in_channels,
        class_names={"names": unpacked.class_names},
        num_train=unpacked.num_train,
        num_test=unpacked.num_test,
        test_split=unpacked.test_split,
        relpath=relpath,
        size_bytes=unpacked.size_bytes,
    )


def store_dataset(
    *, upload: ReceivedUpload, form: DatasetUploadForm, settings: Settings, session: Session, storage: Storage,
    owner: str | None,
) -> DatasetRecord:
    """Check and unpack the upload, move it to datasets/<id>/, copy it to the file store, record it for `owner`.

    Blocking (file and database work): the route runs it in the thread pool. The staging folder
    is always removed; a failure after the move removes the dataset folder too."""
    staging = new_staging_dir(settings)
    try:
        unpacked = unpack_dataset(upload, staging=staging, settings=settings)
        dataset_id = repository.new_dataset_id()
        destination = settings.datasets_dir / dataset_id
        install_dataset(unpacked, destination)
        record = _dataset_record(dataset_id, unpacked, form.name or upload.default_name(dataset_id))
        try:
            store_folder(storage, destination, f"datasets/{dataset_id}")
            record.owner = owner
            record = repository.create_dataset(session, record)
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("dataset %s: stored %s (%d classes, %d train, %d test from %s)", dataset_id, unpacked.kind,
             record.num_classes, record.num_train, record.num_test, record.test_split or "a random held-out share")
    return record
