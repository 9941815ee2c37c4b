"""Receiving uploaded files safely: streamed with a size cap, then checked before anything is kept.

FastAPI's own form parsing spools the whole upload to the system temp folder
before a route runs, so a size cap could only act after the fact. Here the
multipart body is parsed as it arrives and the file part is written in chunks
to DISTILL_HOME/tmp, stopping (413) as soon as it passes the cap; the temp file
is removed on every failure path.

Content checks never trust the client: weights are read as safetensors or with
`torch.load(weights_only=True)` (never full unpickling), archives are unpacked member by member with names normalised
and refused when they could land outside the target (zip-slip), and the total
unpacked size is capped (zip bombs). Results are staged in a temp folder and
moved into place with one rename, so a failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError
from core.models.compat import DatasetShape, fit_problems, image_channels, weights_shape
from core.data import IMAGE_SUFFIXES, find_splits, image_folder_classes, load_dataset
from core.errors import DataError, WeightsError
from core.models import build_model, is_safetensors, load_state, read_state_dict
from core.spec import DatasetSpec, has_control_characters
from store.settings import Settings

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024  # a text field (arch, name, ...) is tiny; anything bigger is abuse
MAX_FIELDS = 20
# Headroom for boundaries, part headers and text fields when judging Content-Length against the cap.
MULTIPART_OVERHEAD_BYTES = MIB
# An archive may unpack to at most this many times the upload cap (and this many members).
UNPACKED_SIZE_FACTOR = 4
MAX_ARCHIVE_MEMBERS = 500_000
_COPY_CHUNK_BYTES = MIB
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

FormModel = TypeVar("FormModel", bound=BaseModel)


def tmp_dir(settings: Settings) -> Path:
    """Uploads are staged on the same filesystem as their destination, so the final move is one atomic rename."""
    path = settings.distill_home / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _too_large(settings: Settings) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload exceeds the {settings.max_upload_mb} MB limit", "file")


# --- streaming ------------------------------------------------------------------------------------------


@dataclass
class ReceivedUpload:
    """The text fields of a multipart form and its one file, already on disk under DISTILL_HOME/tmp."""

    fields: dict[str, str]
    path: Path
    filename: str
    size_bytes: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def default_name(self, fallback: str) -> str:
        """A record's name when the client gave none: the file's stem, cut to the column's 200 characters."""
        stem = PurePosixPath(self.filename.replace("\\", "/")).stem
        printable = "".join(char for char in stem if not has_control_characters(char))
        return (printable or fallback)[:200]


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


class _StreamingForm:
    """Callbacks for python-multipart's MultipartParser: text fields in memory, the file part to disk."""

    def __init__(self, settings: Settings, file_field: str) -> None:
        self.settings = settings
        self.file_field = file_field
        self.cap_bytes = settings.max_upload_mb * MIB
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.file_handle: IO[bytes] | None = None
        self.file_path: Path | None = None
        self.filename = ""
        self.size_bytes = 0
        self.digest = hashlib.sha256()
        self.writing_file = False
        self.ended = False

    # Local-disk writes of one network chunk are short; doing them inline keeps the parser simple.
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise ApiError(400, "invalid_multipart", "a multipart part has no name in its Content-Disposition")
        self.part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self.part.name != self.file_field:
                raise ApiError(422, "validation_error", f"unexpected file field '{self.part.name}'", self.part.name)
            if self.file_handle is not None:
                raise ApiError(422, "validation_error", f"send exactly one '{self.file_field}'", self.file_field)
            self.filename = options[b"filename"].decode("utf-8", "replace").replace("\x00", "")
            self.file_handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in on_part_end / close()
                dir=tmp_dir(self.settings), prefix="upload-", suffix=".part", delete=False
            )
            self.file_path = Path(self.file_handle.name)
            self.writing_file = True
        elif len(self.fields) >= MAX_FIELDS:
            raise ApiError(422, "validation_error", f"too many form fields (max {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.writing_file:
            assert self.file_handle is not None
            self.size_bytes += len(chunk)
            if self.size_bytes > self.cap_bytes:
                raise _too_large(self.settings)
            self.file_handle.write(chunk)
            self.digest.update(chunk)
            return
        if len(self.part.data) + len(chunk) > MAX_FIELD_BYTES:
            raise ApiError(422, "validation_error", f"form field '{self.part.name}' is too long", self.part.name)
        self.part.data += chunk

    def on_part_end(self) -> None:
        if self.writing_file:
            assert self.file_handle is not None
            self.file_handle.close()
            self.writing_file = False
        else:
            value = self.part.data.decode("utf-8", "replace")
            if "\x00" in value:  # PostgreSQL text cannot hold it; no legitimate field needs it
                raise ApiError(422, "validation_error", f"form field '{self.part.name}' contains NUL", self.part.name)
            self.fields[self.part.name] = value

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.file_handle is not None and not self.file_handle.closed:
            self.file_handle.close()

    def discard(self) -> None:
        self.close()
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


async def receive_upload(request: Request, settings: Settings, file_field: str = "file") -> ReceivedUpload:
    """Parse a multipart/form-data body as it streams in; the caller must `discard()` the file when done."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, "unsupported_media_type", "send the upload as multipart/form-data", file_field)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_mb * MIB + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(settings)  # refuse before reading a byte

    form = _StreamingForm(settings, file_field)
    callbacks = {name: getattr(form, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_end")}
    try:
        parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if not form.ended:
            raise ApiError(400, "invalid_multipart", "the multipart body is truncated")
    except FormParserError as exc:
        form.discard()
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from exc
    except BaseException:
        form.discard()
        raise
    form.close()
    if form.file_path is None:
        raise ApiError(422, "validation_error", f"the form needs a file field '{file_field}'", file_field)
    log.info("received upload %r (%d bytes) into %s", form.filename, form.size_bytes, form.file_path.name)
    return ReceivedUpload(fields=form.fields, path=form.file_path, filename=form.filename,
                          size_bytes=form.size_bytes, sha256=form.digest.hexdigest())


# --- weights --------------------------------------------------------------------------------------------


@dataclass
class CheckedWeights:
    """Uploaded weights that load strictly into their architecture, as a plain state dict."""

    state: dict[str, Any]
    num_classes: int
    in_channels: int
    is_safetensors: bool  # stored as uploaded; other formats are stored converted to safetensors


def check_weights(path: Path, arch: str, num_classes: int | None, in_channels: int | None) -> CheckedWeights:
    """The file must be safetensors or a weights-only PyTorch state dict that loads strictly into `arch`.

    PyTorch files are read with `torch.load(weights_only=True)`: a pickle that would run
    code is refused by the restricted unpickler, never executed. Class count and input
    channels come from the form when given, else from the weights' head and stem shapes.
    Every problem with the bytes is 422 naming `file`; a missing count names its field.
    """
    try:
        state = read_state_dict(path, field="file")
        found = weights_shape(state, arch)
    except WeightsError as exc:
        raise ApiError(422, "invalid_weights", exc.message, "file") from exc
    except KeyError as exc:
        raise ApiError(422, "validation_error", f"unknown architecture '{arch}'", "arch") from exc
    if problems := fit_problems(found, dataset=DatasetShape(num_classes, in_channels)):
        raise ApiError(422, "invalid_weights", f"the weights do not fit the form: {'; '.join(problems)}", "file")
    num_classes = num_classes or found.num_classes
    in_channels = in_channels or found.in_channels
    for value, name in ((num_classes, "num_classes"), (in_channels, "in_channels")):
        if value is None:
            raise ApiError(422, "validation_error", f"cannot read {name} from the weights of {arch}; give it", name)
    assert num_classes is not None and in_channels is not None
    try:
        load_state(build_model(arch, num_classes, in_channels), state, field="file")
    except WeightsError as exc:
        raise ApiError(422, "invalid_weights", f"{exc.message} ({arch}, {num_classes} classes, "
                       f"{in_channels} channels)", "file") from exc
    return CheckedWeights(state, num_classes, in_channels, is_safetensors(path))


# --- datasets -------------------------------------------------------------------------------------------


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


def unpack_dataset(upload: ReceivedUpload, staging: Path, settings: Settings) -> UnpackedDataset:
    """Check an uploaded .zip (ImageFolder tree) or .npz and stage it under `staging` (an empty folder)."""
    kind = _dataset_kind(upload)
    if kind == "npz":
        return _stage_npz(upload, staging)
    return _stage_image_folder(upload, staging, settings)


def install_dataset(unpacked: UnpackedDataset, destination: Path) -> None:
    """Move the staged dataset into place with one rename: readers see all of it or nothing."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(unpacked.root, destination)


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_dataset", message, "file")


def _unsafe(message: str) -> ApiError:
    return ApiError(422, "unsafe_archive", message, "file")


def _dataset_kind(upload: ReceivedUpload) -> str:
    if not zipfile.is_zipfile(upload.path):  # .npz files are zip archives too
        raise _invalid("the file must be a .zip of an ImageFolder tree or a .npz with arrays x and y")
    suffix = PurePosixPath(upload.filename).suffix.lower()
    if suffix in (".npz", ".zip"):
        return suffix[1:]
    with zipfile.ZipFile(upload.path) as archive:
        names = archive.namelist()
    return "npz" if names and all(name.endswith(".npy") for name in names) else "zip"


def _stage_npz(upload: ReceivedUpload, staging: Path) -> UnpackedDataset:
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
    """The member's path components, or 422 unsafe_archive when it could escape the target folder."""
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
    extract = staging / "tree"
    extract.mkdir()
    limit_bytes = settings.max_upload_mb * MIB * UNPACKED_SIZE_FACTOR
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
    root = _tree_root(extract)
    summary = _check_image_tree(root)
    try:
        load_dataset(DatasetSpec(path=str(root), image_size=8), seed=0)  # the worker will read it the same way
    except DataError as exc:
        raise _invalid(exc.message) from exc
    return UnpackedDataset(kind="imagefolder", root=root, data_name=None, class_names=summary[0],
                           in_channels=summary[1], num_train=summary[2], num_test=summary[3], size_bytes=written,
                           test_split=summary[4])


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


def new_staging_dir(settings: Settings) -> Path:
    path = tmp_dir(settings) / f"staging-{uuid.uuid4().hex}"
    path.mkdir()
    return path


# --- form fields ----------------------------------------------------------------------------------------


def parse_fields(form_model: type[FormModel], fields: dict[str, str]) -> FormModel:
    """Validate the text fields with a pydantic model; errors come out like any other 422, naming the field."""
    try:
        return form_model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def multipart_openapi(form_model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """The request body as OpenAPI sees it: the form model's fields plus the binary `file` part.

    Needed because the body is parsed by hand (to stream it), so FastAPI cannot derive it.
    """
    schema = form_model.model_json_schema()
    properties = {"file": {"type": "string", "format": "binary", "description": "The file to upload."},
                  **schema.get("properties", {})}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties,
                               "required": ["file", *schema.get("required", [])]},
                    "example": example,
                }
            },
        }
    }
