"""Uploaded datasets: a .zip of an ImageFolder tree or a .npz, checked and unpacked under DISTILL_HOME.

The routes only receive and answer; what an archive must hold, and how it is unpacked and
kept, is the upload rule in api.services.dataset_uploads.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.deps import CallerDep, SessionDep, SettingsDep, StateDep, StorageDep, UploadId
from api.routes import API_V1
from api.schemas import ERROR_RESPONSES, DatasetList, DatasetOut
from api.services.bucket_datasets import BucketDatasetIn, register_bucket_dataset
from api.services.dataset_uploads import DatasetUploadForm, store_dataset
from api.uploads import handle_upload, owned_upload, upload_not_found, upload_route
from store import repository

router = APIRouter(prefix=f"{API_V1}/datasets", tags=["datasets"])

_UPLOAD_EXAMPLE = {"file": "(binary: flowers.zip with train/<class>/*.jpg and test/<class>/*.jpg)",
                   "name": "flowers"}


@router.post("", **upload_route(
    DatasetUploadForm, _UPLOAD_EXAMPLE,
    summary="Upload a dataset (.zip ImageFolder tree or .npz)",
    description="multipart/form-data with `file` and optional `name`. A .zip holds `train/<class>/*` images "
    "and optionally a held-out split in `val/`, `valid/`, `validation/` or `test/` (the first found; the response's "
    "`test_split` names it, null = jobs hold out a seeded random share); photos of any size. "
    "A .npz holds arrays `x`, `y` and optionally `x_test`, `y_test` "
    "(numeric only: object arrays are refused). "
    "Or a JSON body `{\"uri\": \"s3://bucket/prefix/\", \"name\": ...}` registers a dataset that stays in the "
    "bucket (an ImageFolder prefix, or train-*.tar / val-*.tar shards of <key>.jpg + <key>.cls).",
))
async def upload_dataset(
    request: Request, settings: SettingsDep, session: SessionDep, storage: StorageDep, caller: CallerDep,
    state: StateDep,
) -> DatasetOut:
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        return await register_by_reference(request, session, caller.owner)  # a dataset that stays in a bucket
    store = partial(store_dataset, settings=settings, session=session, storage=storage, owner=caller.owner,
                    checks=state.upload_checks)
    return await handle_upload(request, settings, form_model=DatasetUploadForm, store=store,
                               present=DatasetOut.from_record)


@router.get("", summary="List uploaded datasets, newest first", responses=ERROR_RESPONSES)
def list_datasets(session: SessionDep, caller: CallerDep) -> DatasetList:
    records = repository.list_datasets(session, owner=caller.scope)
    return DatasetList(items=[DatasetOut.from_record(record) for record in records])


@router.get("/{dataset_id}", summary="One uploaded dataset", responses=upload_not_found("dataset"))
def get_dataset(dataset_id: UploadId, session: SessionDep, caller: CallerDep) -> DatasetOut:
    return DatasetOut.from_record(owned_upload(repository.get_dataset, "dataset", session, dataset_id, caller.scope))


async def register_by_reference(request: Request, session: Session, owner: str | None) -> DatasetOut:
    """The JSON form of POST /v1/datasets (see api.services.bucket_datasets)."""
    try:
        body = BucketDatasetIn.model_validate(await request.json())
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None
    except ValueError:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "the body is not valid JSON",
                                       "ctx": {"error": "the body is not valid JSON"}}]) from None
    record = await run_in_threadpool(register_bucket_dataset, session, body, owner)
    return DatasetOut.from_record(record)
