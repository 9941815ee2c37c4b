"""Shared dependencies as `Annotated` aliases: routes declare what they need by type.

Everything comes from `app.state` (set by `create_app`), so two apps with two
Settings can live in one process (tests do) without global state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller, authenticate
from api.errors import ApiError
from store.settings import Settings
from store.storage import Storage

# auto_error=False: a missing header is our 401 with our error body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="Bearer key from DISTILL_API_KEYS (only when keys are set).")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    return request.app.state.database.sessions


def get_session(makers: Annotated[sessionmaker[Session], Depends(get_sessionmaker)]) -> Iterator[Session]:
    """One session per request, closed (and rolled back if uncommitted) when the response is done."""
    with makers() as session:
        yield session


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionMakerDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def require_api_key(
    request: Request, settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller (ApiKeyMiddleware already checked the key; this also documents the scheme in OpenAPI)."""
    caller = getattr(request.state, "caller", None)
    if caller is not None:
        return caller
    header = f"{credentials.scheme} {credentials.credentials}" if credentials is not None else None
    return authenticate(header, settings)


CallerDep = Annotated[Caller, Depends(require_api_key)]
