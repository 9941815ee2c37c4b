"""Uploaded datasets: a .zip of an ImageFolder tree or a .npz, checked and unpacked under DISTILL_HOME."""

from __future__ import annotations

import logging
import shutil
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError
from api.routes import API_V1
from api.ratelimit import rate_limit
from api.schemas import ERROR_RESPONSES, UPLOAD_ERROR_RESPONSES, DatasetList, DatasetOut, ErrorResponse
from api.uploads import (
    ReceivedUpload,
    install_dataset,
    multipart_openapi,
    new_staging_dir,
    parse_fields,
    receive_upload,
    unpack_dataset,
)
from core.spec import check_plain_text
from store import repository
from store.models import DatasetRecord
from store.settings import Settings
from store.storage import Storage, store_folder

log = logging.getLogger(__name__)

router = APIRouter(prefix=f"{API_V1}/datasets", tags=["datasets"])


class DatasetUploadForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200, description="Label; default: the file name.")

    _plain_name = field_validator("name")(classmethod(lambda cls, v: check_plain_text(v)))


_UPLOAD_EXAMPLE = {"file": "(binary: flowers.zip with train/<class>/*.jpg and test/<class>/*.jpg)",
                   "name": "flowers"}


def _store_dataset(
    upload: ReceivedUpload, form: DatasetUploadForm, settings: Settings, session: Session, storage: Storage,
    owner: str | None,
) -> DatasetOut:
    staging = new_staging_dir(settings)
    try:
        unpacked = unpack_dataset(upload, staging, settings)
        dataset_id = repository.new_dataset_id()
        destination = settings.datasets_dir / dataset_id
        install_dataset(unpacked, destination)
        relpath = f"datasets/{dataset_id}" + (f"/{unpacked.data_name}" if unpacked.data_name else "")
        record = DatasetRecord(
            id=dataset_id,
            name=form.name or upload.default_name(dataset_id),
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
    return DatasetOut.from_record(record)


@router.post(
    "",
    status_code=201,
    dependencies=[Depends(rate_limit)],
    summary="Upload a dataset (.zip ImageFolder tree or .npz)",
    description="multipart/form-data with `file` and optional `name`. A .zip holds `train/<class>/*` images "
    "and optionally a held-out split in `val/`, `valid/`, `validation/` or `test/` (the first found; the response's "
    "`test_split` names it, null = jobs hold out a seeded random share); photos of any size. A .npz holds arrays `x`, `y` and optionally `x_test`, `y_test` "
    "(numeric only: object arrays are refused).",
    openapi_extra=multipart_openapi(DatasetUploadForm, _UPLOAD_EXAMPLE),
    responses=UPLOAD_ERROR_RESPONSES,
)
async def upload_dataset(
    request: Request, settings: SettingsDep, session: SessionDep, storage: StorageDep, caller: CallerDep
) -> DatasetOut:
    upload = await receive_upload(request, settings)
    try:
        form = parse_fields(DatasetUploadForm, upload.fields)
        return await run_in_threadpool(_store_dataset, upload, form, settings, session, storage, caller.owner)
    finally:
        upload.discard()


@router.get("", summary="List uploaded datasets, newest first", responses=ERROR_RESPONSES)
def list_datasets(session: SessionDep, caller: CallerDep) -> DatasetList:
    return DatasetList(items=[DatasetOut.from_record(record) for record in repository.list_datasets(session, owner=caller.scope)])


@router.get("/{dataset_id}", summary="One uploaded dataset",
            responses={404: {"model": ErrorResponse, "description": "`dataset_not_found`."}, **ERROR_RESPONSES})
def get_dataset(dataset_id: Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")], session: SessionDep,
    caller: CallerDep,
) -> DatasetOut:
    try:
        return DatasetOut.from_record(repository.get_dataset(session, dataset_id, caller.scope))
    except repository.NotFound:
        raise ApiError(404, "dataset_not_found", f"no dataset with id '{dataset_id}'", "dataset_id") from None
