"""Shared dependencies as `Annotated` aliases: routes declare what they need by type.

Everything comes from `app.state` (set by `create_app`), so two apps with two
Settings can live in one process (tests do) without global state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, authenticate
from api.errors import ApiError
from store.settings import Settings
from store.storage import Storage

T = TypeVar("T")

# auto_error=False: a missing header is our 401 with our error body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="Bearer key from DISTILL_API_KEYS (only when keys are set).")


# Plain lookups are `async def`: FastAPI runs a sync dependency in the thread pool, and each hop
# there and back costs more than the lookup itself (a poll used to make six such hops).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    return request.app.state.database.sessions


async def get_reader(request: Request) -> Engine:
    """The engine for routes that only read: plain connections, no transaction, no commit (store.db.read_engine)."""
    return request.app.state.database.reader


async def run_read(request: Request, function: Callable[..., T], *args: Any) -> T:
    """Run a short read-only database call: inline on SQLite, in the thread pool elsewhere.

    A SQLite read is CPU work in this process (a page-cache lookup in WAL mode, where readers
    never wait for the writer): a thread would not run it any sooner under the GIL, and the hop
    there and back costs about as much as the read. A PostgreSQL read waits on a socket, so
    there the event loop serves other requests meanwhile.
    """
    return await run_read_on(request.app.state, function, *args)


async def run_read_on(state: Any, function: Callable[..., T], *args: Any) -> T:
    """`run_read` for code that holds the app's state rather than a request (api.fastpath)."""
    if state.inline_reads:
        return function(*args)
    return await run_in_threadpool(function, *args)


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


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


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
