"""Uploaded teacher weights: safetensors or weights-only PyTorch state dicts that load strictly into an architecture.

The routes only receive and answer; what the weights must be, and how they are kept, is the
upload rule in api.services.model_uploads.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request

from api.deps import CallerDep, SessionDep, SettingsDep, StateDep, StorageDep, UploadId
from api.routes import API_V1
from api.schemas import ERROR_RESPONSES, ModelList, ModelOut
from api.services.model_uploads import ModelUploadForm, store_model
from api.uploads import handle_upload, owned_upload, upload_not_found, upload_route
from store import repository

router = APIRouter(prefix=f"{API_V1}/models", tags=["models"])

_UPLOAD_EXAMPLE = {"file": "(binary: resnet20-digits.safetensors)", "arch": "resnet20", "num_classes": 10,
                   "in_channels": 1, "name": "resnet20-digits"}
_PROGRAM_EXAMPLE = {"file": "(binary: my-resnet.pt2, written by torch.export.save)", "name": "my-resnet"}


def _with_program_example(options: dict) -> dict:
    """Both upload forms as named OpenAPI examples: a state dict with its arch, and a .pt2 program without one."""
    media = options["openapi_extra"]["requestBody"]["content"]["multipart/form-data"]
    media["examples"] = {
        "state-dict": {"summary": "Weights for a named architecture", "value": media.pop("example")},
        "exported-program": {"summary": "A torch.export program (.pt2): no arch", "value": _PROGRAM_EXAMPLE},
    }
    return options


@router.post("", **_with_program_example(upload_route(
    ModelUploadForm, _UPLOAD_EXAMPLE,
    summary="Upload teacher weights (safetensors, a .pt/.pth state dict, or a torch.export .pt2 program)",
    description="multipart/form-data with `file` (safetensors, or a PyTorch state dict read with "
    "torch.load(weights_only=True); `{'state_dict': ...}`/`{'model': ...}` wrappers and `module.` prefixes are "
    "unwrapped), `arch`, optional `num_classes` and `in_channels` (read from the weights when left out) and "
    "optional `name`. The weights must load strictly into the architecture; pickles that are not weights-only are "
    "refused without running them. Stored as safetensors. A `torch.export.save` program (`.pt2`) needs no "
    "`arch` (the program is the architecture; recorded as `exported`): it is read without unpickling code or "
    "compiling code from the file, must hold ATen operators only and a dynamic batch dimension, and is kept as "
    "uploaded. Any teacher written in PyTorch can be brought this way (see the README's 'Bring a teacher from "
    "your own code').",
)))
async def upload_model(
    request: Request, settings: SettingsDep, session: SessionDep, storage: StorageDep, caller: CallerDep,
    state: StateDep,
) -> ModelOut:
    store = partial(store_model, settings=settings, session=session, storage=storage, owner=caller.owner,
                    checks=state.upload_checks)
    return await handle_upload(request, settings, form_model=ModelUploadForm, store=store,
                               present=ModelOut.from_record)


@router.get("", summary="List uploaded models, newest first", responses=ERROR_RESPONSES)
def list_models(session: SessionDep, caller: CallerDep) -> ModelList:
    records = repository.list_models(session, owner=caller.scope)
    return ModelList(items=[ModelOut.from_record(record) for record in records])


@router.get("/{model_id}", summary="One uploaded model", responses=upload_not_found("model"))
def get_model(model_id: UploadId, session: SessionDep, caller: CallerDep) -> ModelOut:
    return ModelOut.from_record(owned_upload(repository.get_model, "model", session, model_id, caller.scope))
