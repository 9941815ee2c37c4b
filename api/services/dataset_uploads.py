"""The dataset upload rule: what an uploaded .zip or .npz must be to become a dataset, and how it is kept.

Nothing in an archive is trusted: the archive rules (api.services.archive_rules) decide
from the zip's directory what may be written and bound it while writing; every image is
checked at a bounded cost (api.services.image_checks); a .npz is opened without pickle,
so an object array (which could run code) is refused. The checks run in a checking
process when the app gives one (api.services.upload_checks), so their memory never
stays in the API. The result is staged in a folder of its own and moved into place
with one rename.

Problems are `DataError` (`invalid_dataset`) or `UnsafeArchive` (`unsafe_archive`),
both naming `file`; a message built from a library's exception passes core.redact.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from api.services.archive_rules import ArchiveLimits, check_npz_directory, unzip
from api.services.image_checks import check_image_tree
from api.services.upload_checks import UploadChecks
from api.services.upload_staging import ReceivedUpload, new_staging_dir
from core.data import load_dataset
from core.errors import DataError
from core.redact import exception_text
from core.spec import DatasetSpec, check_plain_text
from store import repository
from store.models import DatasetRecord
from store.settings import Settings
from store.storage import Storage, store_folder

log = logging.getLogger(__name__)


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


# --- checking and staging -------------------------------------------------------------------------------


def unpack_dataset(upload: ReceivedUpload, *, staging: Path, settings: Settings) -> UnpackedDataset:
    """Check an uploaded .zip (ImageFolder tree) or .npz and stage it under `staging` (an empty folder)."""
    kind = _dataset_kind(upload)
    if kind == "npz":
        return _stage_npz(upload, staging, settings)
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


def _stage_npz(upload: ReceivedUpload, staging: Path, settings: Settings) -> UnpackedDataset:
    """Move the .npz into staging and read it as a worker will, so a job never meets a file the upload accepted."""
    target = staging / "data.npz"
    os.replace(upload.path, target)  # same filesystem: a rename, not a copy
    check_npz_directory(target, ArchiveLimits.from_settings(settings))  # before numpy inflates an array
    counts = _npz_counts(target)
    try:
        bundle = load_dataset(DatasetSpec(path=str(target), image_size=8), seed=0)
    except DataError as exc:
        raise _invalid(exception_text(exc, {staging: ""})) from exc
    return UnpackedDataset(kind="npz", root=staging, data_name=target.name, class_names=bundle.class_names,
                           in_channels=bundle.in_channels, num_train=counts[0], num_test=counts[1],
                           size_bytes=target.stat().st_size, test_split="arrays" if counts[1] else None)


def _npz_counts(path: Path) -> tuple[int, int]:
    """Open every array without pickle: an object array (which could run code) is refused here."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            shapes = {key: arrays[key].shape for key in arrays.files}
    except ValueError as exc:  # numpy raises it lazily, per array, for object arrays
        known = {path.parent: ""}
        raise _invalid(f".npz arrays must be numeric (object arrays are refused): {exception_text(exc, known)}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _invalid(f"cannot read the .npz: {exception_text(exc, {path.parent: ''})}") from exc
    if "x" not in shapes or "y" not in shapes:
        raise _invalid(".npz must hold arrays 'x' and 'y' (optional 'x_test', 'y_test')")
    num_test = shapes["x_test"][0] if "x_test" in shapes and "y_test" in shapes and shapes["x_test"] else 0
    return int(shapes["x"][0]) if shapes["x"] else 0, int(num_test)


def _stage_image_folder(upload: ReceivedUpload, staging: Path, settings: Settings) -> UnpackedDataset:
    """Unpack under the archive rules, then check every image at a bounded cost and the tree's structure."""
    extract = staging / "tree"
    extract.mkdir()
    written = unzip(upload.path, extract, ArchiveLimits.from_settings(settings))
    root = _tree_root(extract)
    summary = check_image_tree(root, settings.max_image_pixels)
    return UnpackedDataset(kind="imagefolder", root=root, data_name=None, class_names=summary[0],
                           in_channels=summary[1], num_train=summary[2], num_test=summary[3], size_bytes=written,
                           test_split=summary[4])


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
    owner: str | None, checks: UploadChecks | None = None,
) -> DatasetRecord:
    """Check and unpack the upload, move it to datasets/<id>/, copy it to the file store, record it for `owner`.

    Blocking (file and database work): the route runs it in the thread pool, and the unpacking
    and checking in `checks`' process when given (the API's; without, in this process). The
    staging folder is always removed; a failure after the move removes the dataset folder too."""
    staging = new_staging_dir(settings, upload.folder)
    try:
        if checks is not None:
            unpacked = checks.run(unpack_dataset, upload, staging=staging, settings=settings)
        else:
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
