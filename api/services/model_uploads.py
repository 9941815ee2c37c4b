"""The teacher-weights upload rule: what an uploaded file must be to become a model, and how it is kept.

The bytes are never trusted: they are read as safetensors or with
`torch.load(weights_only=True)` (a pickle that would run code is refused by the
restricted unpickler, never executed) and must load strictly into the named
architecture. What is kept is safetensors, so nothing downstream unpickles; or a
`torch.export` program (`.pt2`, no `arch`: the program is the architecture), kept as
uploaded once core.models.exported has loaded it with its checks (no code from the file runs).
Problems are `WeightsError` naming `file`, or `InvalidFormValue` naming the form field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session

from api.services.errors import InvalidFormValue
from api.services.upload_checks import UploadChecks
from api.services.upload_staging import ReceivedUpload
from core.errors import WeightsError
from core.models import (
    UnknownArchitecture, build_model, check_arch, is_safetensors, load_state, read_state_dict, save_state,
)
from core.models.weights import key_mismatch
from core.models.compat import DatasetShape, WeightsShape, fit_problems, weights_shape
from core.models.exported import EXPORTED_ARCH, PROGRAM_SUFFIX, is_exported_program, load_exported, program_dims
from core.spec import TeacherSpec, check_plain_text
from store import repository
from store.models import ModelRecord
from store.settings import Settings
from store.storage import Storage, discard_quietly, store_file

log = logging.getLogger(__name__)


class ModelUploadForm(BaseModel):
    """The text fields sent next to the `file` part."""

    model_config = ConfigDict(extra="forbid")

    arch: str | None = Field(None, max_length=60, description="Architecture the weights belong to: 'timm/<name>', "
                             "'torchvision/<name>' or a short name such as 'resnet20'. Required for a state dict; "
                             "left out for a torch.export program (.pt2), which is its own architecture.")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="Output classes of the classifier head; "
                                    "default: read from the weights.")
    in_channels: int | None = Field(None, ge=1, le=4, description="Input image channels: 1 (grey) or 3 (RGB); "
                                    "default: read from the weights.")
    name: str | None = Field(None, min_length=1, max_length=200, description="Label; default: the file name.")
    class_names: str | None = Field(
        None, max_length=1_000_000, examples=['["airplane", "automobile", "bird"]'],
        description="The teacher's output order, a JSON array of names (one per output); a job using this model "
        "maps them to its dataset's classes by name unless its spec sets teacher.class_names.")
    normalize: str | None = Field(
        None, max_length=1000, examples=['{"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'],
        description="The teacher's own input normalisation, a JSON object {mean, std}; a job using this model "
        "feeds it that unless its spec sets teacher.normalize.")

    _plain_name = field_validator("name")(classmethod(lambda cls, v: check_plain_text(v)))

    def teacher_inputs(self, num_classes: int) -> tuple[list[str] | None, dict[str, Any] | None]:
        """(class_names, normalize) read as the spec's teacher fields read them; InvalidFormValue naming the
        form field when either is not what a spec accepts, or when the names are not one per output."""
        names = _teacher_field(self.class_names, "class_names")
        normalize = _teacher_field(self.normalize, "normalize")
        if names is not None and len(names) != num_classes:
            raise InvalidFormValue(f"class_names: {len(names)} names for a model with {num_classes} outputs",
                                   "class_names")
        if isinstance(normalize, str):
            raise InvalidFormValue("normalize: give {mean, std} ('model' is for a job's timm teacher)", "normalize")
        return names, normalize

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str | None) -> str | None:
        """Refuse an architecture no registry knows, with the registries' own message, before the file is read."""
        if arch is None or arch == EXPORTED_ARCH:
            return arch
        try:
            return check_arch(arch)
        except UnknownArchitecture as exc:
            raise ValueError(str(exc)) from None


def _teacher_field(text: str | None, field: str) -> Any:
    """The form's JSON text read as the spec's `teacher.<field>` (TeacherSpec is the one rule for both)."""
    if text is None:
        return None
    try:
        value = getattr(TeacherSpec.model_validate({"weights": "upload", field: json.loads(text)}), field)
    except ValidationError as exc:
        raise InvalidFormValue(f"{field}: {exc.errors()[0]['msg']}", field) from None
    except ValueError as exc:  # not JSON
        raise InvalidFormValue(f"{field}: not JSON ({exc})", field) from None
    return value.model_dump() if isinstance(value, BaseModel) else value


@dataclass
class CheckedWeights:
    """Uploaded weights that load strictly into their architecture, as a plain state dict."""

    state: dict[str, Any]
    num_classes: int
    in_channels: int
    is_safetensors: bool  # stored as uploaded; other formats are stored converted to safetensors
    program: bool = False  # a torch.export program: stored as uploaded, with the .pt2 suffix


def check_program(path: Path, *, num_classes: int | None, in_channels: int | None) -> CheckedWeights:
    """A torch.export program, loaded with core.models.exported's checks; its classes and channels are
    read from it (a forward of one image) and must agree with the form's when given."""
    module = load_exported(path, field="file")
    found_classes, found_channels = program_dims(module)
    found = WeightsShape(EXPORTED_ARCH, found_classes, found_channels)
    if problems := fit_problems(found, dataset=DatasetShape(num_classes, in_channels)):
        raise WeightsError(f"the program does not fit the form: {'; '.join(problems)}", "file")
    return CheckedWeights({}, found_classes, found_channels, is_safetensors=False, program=True)


def check_weights(path: Path, *, arch: str, num_classes: int | None, in_channels: int | None) -> CheckedWeights:
    """The file must be safetensors or a weights-only PyTorch state dict that loads strictly into `arch`.

    Class count and input channels come from the form when given, else from the weights'
    head and stem shapes. Every problem with the bytes names `file`; a count that is
    neither given nor readable names its field.
    """
    try:
        state = read_state_dict(path, field="file")
        found = weights_shape(state, arch)
    except WeightsError as exc:
        raise WeightsError(exc.message, "file") from exc
    except KeyError as exc:
        raise InvalidFormValue(f"unknown architecture '{arch}'", "arch") from exc
    if problems := fit_problems(found, dataset=DatasetShape(num_classes, in_channels)):
        raise WeightsError(f"the weights do not fit the form: {'; '.join(problems)}", "file")
    if (found.num_classes is None or found.in_channels is None) and (problem := key_mismatch(arch, state)):
        raise WeightsError(f"the weights do not fit {arch}: {problem}", "file")
    num_classes = num_classes or found.num_classes
    in_channels = in_channels or found.in_channels
    for value, name in ((num_classes, "num_classes"), (in_channels, "in_channels")):
        if value is None:
            raise InvalidFormValue(f"cannot read {name} from the weights of {arch}; give it", name)
    assert num_classes is not None and in_channels is not None
    try:
        load_state(build_model(arch, num_classes, in_channels), state, field="file")
    except WeightsError as exc:
        raise WeightsError(f"{exc.message} ({arch}, {num_classes} classes, {in_channels} channels)", "file") from exc
    return CheckedWeights(state, num_classes, in_channels, is_safetensors(path))


@dataclass
class KeptWeights:
    """What the record needs of checked weights, once they sit as safetensors (or a .pt2 program) at `path`
    (no tensors: a check run in a checking process hands back only this, so the API never holds them)."""

    path: Path
    num_classes: int
    in_channels: int
    converted: bool  # False: the upload is kept as it came (safetensors, or a program)
    program: bool = False  # a torch.export program: stored as uploaded, with the .pt2 suffix


def check_and_keep(upload_path: Path, converted_path: Path, *, arch: str | None, num_classes: int | None,
                   in_channels: int | None) -> KeptWeights:
    """A torch.export program (found by its content, not its name) checked by `check_program`; else
    `check_weights` for `arch`, then a PyTorch state dict written as safetensors to `converted_path`."""
    if is_exported_program(upload_path):
        program = check_program(upload_path, num_classes=num_classes, in_channels=in_channels)
        return KeptWeights(upload_path, program.num_classes, program.in_channels, converted=False, program=True)
    if arch is None or arch == EXPORTED_ARCH:
        raise InvalidFormValue("arch is required for a state dict (only a torch.export program, .pt2, needs "
                               "none)", "arch")
    checked = check_weights(upload_path, arch=arch, num_classes=num_classes, in_channels=in_channels)
    if checked.is_safetensors:
        return KeptWeights(upload_path, checked.num_classes, checked.in_channels, converted=False)
    save_state(checked.state, converted_path)  # nothing downstream ever unpickles
    return KeptWeights(converted_path, checked.num_classes, checked.in_channels, converted=True)


def _sha256(path: Path) -> str:
    """The digest of the converted file: the record names the bytes kept, not the bytes uploaded."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def store_model(
    *, upload: ReceivedUpload, form: ModelUploadForm, settings: Settings, session: Session, storage: Storage,
    owner: str | None, checks: UploadChecks | None = None,
) -> ModelRecord:
    """Check the weights, keep them as safetensors in the file store, then record them for `owner`.

    Blocking (file and database work): the route runs it in the thread pool, and the check (which
    loads every tensor) in `checks`' process when given. A failure after the file was placed removes
    it again, so a model row and its file exist together or not at all."""
    converted = upload.path.with_name("converted.safetensors")
    keep = partial(check_and_keep, upload.path, converted, arch=form.arch, num_classes=form.num_classes,
                   in_channels=form.in_channels)
    kept = checks.run(keep) if checks is not None else keep()
    teacher_inputs = form.teacher_inputs(kept.num_classes)  # before the file is placed: a refusal leaves nothing
    model_id = repository.new_model_id()
    relpath = f"models/{model_id}{PROGRAM_SUFFIX if kept.program else '.safetensors'}"
    destination = settings.distill_home / relpath
    destination.parent.mkdir(parents=True, exist_ok=True)
    size_bytes, sha256 = upload.size_bytes, upload.sha256
    os.replace(kept.path, destination)  # same filesystem: a rename
    if kept.converted:
        size_bytes, sha256 = destination.stat().st_size, _sha256(destination)
    record = ModelRecord(
        id=model_id,
        name=form.name or upload.default_name(model_id),
        arch=EXPORTED_ARCH if kept.program else str(form.arch),
        num_classes=kept.num_classes,
        in_channels=kept.in_channels,
        relpath=relpath,
        size_bytes=size_bytes,
        sha256=sha256,
    )
    record.class_names, record.normalize = teacher_inputs
    try:
        store_file(storage, relpath, destination)
        record.owner = owner
        record = repository.create_model(session, record)
    except BaseException:
        destination.unlink(missing_ok=True)
        discard_quietly(storage, relpath)
        raise
    log.info("model %s: stored %s (%d bytes, %s)", model_id, record.arch, upload.size_bytes, upload.sha256[:12])
    return record
