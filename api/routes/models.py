"""Uploaded teacher weights: safetensors or weights-only PyTorch state dicts that load strictly into an architecture."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError
from api.routes import API_V1
from api.ratelimit import rate_limit
from api.schemas import ERROR_RESPONSES, UPLOAD_ERROR_RESPONSES, ErrorResponse, ModelList, ModelOut
from api.uploads import ReceivedUpload, check_weights, multipart_openapi, parse_fields, receive_upload
from core.models import UnknownArchitecture, check_arch, save_state
from core.spec import check_plain_text
from store import repository
from store.models import ModelRecord
from store.settings import Settings
from store.storage import Storage, discard_quietly, store_file

log = logging.getLogger(__name__)

router = APIRouter(prefix=f"{API_V1}/models", tags=["models"])


class ModelUploadForm(BaseModel):
    """The text fields sent next to the `file` part."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(max_length=60, description="Architecture the weights belong to: 'timm/<name>', "
                      "'torchvision/<name>' or a short name such as 'resnet20'.")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="Output classes of the classifier head; "
                                    "default: read from the weights.")
    in_channels: int | None = Field(None, ge=1, le=4, description="Input image channels: 1 (grey) or 3 (RGB); "
                                    "default: read from the weights.")
    name: str | None = Field(None, min_length=1, max_length=200, description="Label; default: the file name.")

    _plain_name = field_validator("name")(classmethod(lambda cls, v: check_plain_text(v)))

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        try:
            return check_arch(arch)
        except UnknownArchitecture as exc:
            raise ValueError(str(exc)) from None


_UPLOAD_EXAMPLE = {"file": "(binary: resnet20-digits.safetensors)", "arch": "resnet20", "num_classes": 10,
                   "in_channels": 1, "name": "resnet20-digits"}


def _store_model(
    upload: ReceivedUpload, form: ModelUploadForm, settings: Settings, session: Session, storage: Storage,
    owner: str | None,
) -> ModelOut:
    checked = check_weights(upload.path, form.arch, form.num_classes, form.in_channels)
    model_id = repository.new_model_id()
    relpath = f"models/{model_id}.safetensors"
    destination = settings.distill_home / relpath
    destination.parent.mkdir(parents=True, exist_ok=True)
    size_bytes, sha256 = upload.size_bytes, upload.sha256
    if checked.is_safetensors:
        os.replace(upload.path, destination)
    else:  # a PyTorch state dict: stored as safetensors, so nothing downstream ever unpickles
        save_state(checked.state, destination)
        size_bytes, sha256 = destination.stat().st_size, _sha256(destination)
    record = ModelRecord(
        id=model_id,
        name=form.name or upload.default_name(model_id),
        arch=form.arch,
        num_classes=checked.num_classes,
        in_channels=checked.in_channels,
        relpath=relpath,
        size_bytes=size_bytes,
        sha256=sha256,
    )
    try:
        store_file(storage, relpath, destination)
        record.owner = owner
        record = repository.create_model(session, record)
    except BaseException:
        destination.unlink(missing_ok=True)
        discard_quietly(storage, relpath)
        raise
    log.info("model %s: stored %s (%d bytes, %s)", model_id, form.arch, upload.size_bytes, upload.sha256[:12])
    return ModelOut.from_record(record)


def _sha256(path: FilePath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@router.post(
    "",
    status_code=201,
    dependencies=[Depends(rate_limit)],
    summary="Upload teacher weights (safetensors or a .pt/.pth state dict)",
    description="multipart/form-data with `file` (safetensors, or a PyTorch state dict read with "
    "torch.load(weights_only=True); `{'state_dict': ...}`/`{'model': ...}` wrappers and `module.` prefixes are "
    "unwrapped), `arch`, optional `num_classes` and `in_channels` (read from the weights when left out) and "
    "optional `name`. The weights must load strictly into the architecture; pickles that are not weights-only are "
    "refused without running them. Stored as safetensors.",
    openapi_extra=multipart_openapi(ModelUploadForm, _UPLOAD_EXAMPLE),
    responses=UPLOAD_ERROR_RESPONSES,
)
async def upload_model(
    request: Request, settings: SettingsDep, session: SessionDep, storage: StorageDep, caller: CallerDep
) -> ModelOut:
    upload = await receive_upload(request, settings)
    try:
        form = parse_fields(ModelUploadForm, upload.fields)
        return await run_in_threadpool(_store_model, upload, form, settings, session, storage, caller.owner)
    finally:
        upload.discard()


@router.get("", summary="List uploaded models, newest first", responses=ERROR_RESPONSES)
def list_models(session: SessionDep, caller: CallerDep) -> ModelList:
    return ModelList(items=[ModelOut.from_record(record) for record in repository.list_models(session, owner=caller.scope)])


@router.get("/{model_id}", summary="One uploaded model",
            responses={404: {"model": ErrorResponse, "description": "`model_not_found`."}, **ERROR_RESPONSES})
def get_model(model_id: Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")], session: SessionDep,
    caller: CallerDep,
) -> ModelOut:
    try:
        return ModelOut.from_record(repository.get_model(session, model_id, caller.scope))
    except repository.NotFound:
        raise ApiError(404, "model_not_found", f"no model with id '{model_id}'", "model_id") from None
