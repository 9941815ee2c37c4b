"""Shared dependencies as `Annotated` aliases: routes declare what they need by type.

Everything comes from the app's `AppState` (api.state, set once by `create_app`) through
`get_state`, so two apps with two Settings can live in one process (tests do) without
global state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, authenticate
from api.state import AppState
from store.settings import Settings
from store.storage import Storage

# auto_error=False: a missing header is our 401 with our error body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="Bearer key from DISTILL_API_KEYS (only when keys are set).")


# Plain lookups are `async def`: FastAPI runs a sync dependency in the thread pool, and each hop
# there and back costs more than the lookup itself (a poll used to make six such hops).


async def get_state(request: Request) -> AppState:
    """The one place a route reaches the app's state; FastAPI solves it once per request."""
    state: AppState = request.app.state
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    """The app's settings, not the environment's: two apps in one process may differ."""
    return state.settings


async def get_sessionmaker(state: StateDep) -> sessionmaker[Session]:
    """For routes that open sessions of their own (readiness checks, event streams), outside the request's one."""
    return state.database.sessions


async def get_reader(state: StateDep) -> Engine:
    """The engine for routes that only read: plain connections, no transaction, no commit (store.db.read_engine)."""
    return state.database.reader


async def get_session(makers: Annotated[sessionmaker[Session], Depends(get_sessionmaker)]) -> AsyncIterator[Session]:
    """One session per request, closed (and rolled back if uncommitted) when the response is done.

    Opening a session does no I/O (it connects on first use), so it happens here; closing one
    that the repository left committed only returns an idle connection to the pool, so that
    too stays on the event loop. Only a session left inside a transaction (an error midway)
    is rolled back in the thread pool, where its round trip cannot stall other requests.
    """
    session = makers()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_celery(state: StateDep) -> Celery:
    """The app's broker client, for routes that enqueue what they created."""
    return state.celery


async def get_storage(state: StateDep) -> Storage:
    """The file store (local or S3) uploads are copied to and artifacts are served from."""
    return state.storage


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionMakerDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
ReaderDep = Annotated[Engine, Depends(get_reader)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
StorageDep = Annotated[Storage, Depends(get_storage)]


async def require_api_key(
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

# The id of an uploaded model or dataset in a path: the shape the repository mints (a prefix and hex), checked
# before any lookup so a malformed id is a 422 naming the parameter, not a query.
UploadId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]
