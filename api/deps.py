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

from api.auth import key_matches
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
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str | None:
    """The caller's key, or None when the service runs without keys."""
    keys = settings.api_key_set
    if not keys:
        return None
    if credentials is None or credentials.scheme.lower() != "bearer" or not key_matches(credentials.credentials, keys):
        raise ApiError(
            401, "unauthorized", "a valid 'Authorization: Bearer <key>' header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


CurrentKey = Annotated[str | None, Depends(require_api_key)]
