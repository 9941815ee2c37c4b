"""Sweeps: a grid of child jobs over one base spec, validated up front, queued together, ranked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session

from api.deps import CallerDep, CeleryDep, SessionDep, SessionMakerDep, SettingsDep, StateDep
from api.errors import ApiError
from api.ratelimit import write_route
from api.routes import API_V1
from api.schemas import ERROR_RESPONSES, WRITE_ERROR_RESPONSES, ErrorResponse, as_json_errors
from api.sweep_events import sweep_events
from api.sweep_report import render_report
from api.services.submissions import start_sweep
from api.sweep_schemas import (
    LEADERBOARD_CSV_EXAMPLE, SweepOut, SweepPage, SweepRequest, SweepSummary, sweep_leaderboard,
)
from core.spec.sweep import leaderboard_csv
from store import repository
from store.models import Sweep
from store.sweeps import cancel_sweep, get_sweep, list_sweeps

router = APIRouter(prefix=f"{API_V1}/sweeps", tags=["sweeps"])

SweepId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$",
                              description="Sweep id, e.g. 'swp_5f0c2a9d3e1b4c7a'.")]
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No sweep with that id (`sweep_not_found`)."}}


def load_sweep(session: Session, sweep_id: str, owner: str | None) -> Sweep:
    """The sweep if `owner` may see it (None: any); another key's sweep is a 404 like a missing one."""
    try:
        return get_sweep(session, sweep_id, owner)
    except repository.NotFound:
        raise ApiError(404, "sweep_not_found", f"no sweep with id '{sweep_id}'", "sweep_id") from None


@router.post("", **write_route(
    201,
    summary="Start a sweep: one child job per grid combination",
    description="Every combination is validated before anything is created; a bad value is named by its grid "
    "path and combination. When the children train their teacher, it is trained once per sweep (a teacher job) "
    "and the children wait for it, then reuse its weights.",
    responses={200: {"model": SweepOut, "description": "Replay of an Idempotency-Key seen with this body."},
               409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body."},
               **WRITE_ERROR_RESPONSES},
))
def create(
    request: SweepRequest, session: SessionDep, settings: SettingsDep, celery: CeleryDep, response: Response,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+$")
    ] = None,
) -> SweepOut:
    sweep, created = start_sweep(request, session=session, settings=settings, celery=celery, owner=caller.owner,
                                 scope=caller.scope, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return SweepOut.from_sweep(load_sweep(session, sweep.id, None))


@router.get("", summary="List sweeps, newest first", responses=ERROR_RESPONSES)
def list_(
    session: SessionDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> SweepPage:
    try:
        sweeps, next_cursor = list_sweeps(session, limit, cursor, caller.scope)
    except ValueError:
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned", "cursor") from None
    return SweepPage(items=[SweepSummary.from_sweep(sweep) for sweep in sweeps], next_cursor=next_cursor)


@router.get("/{sweep_id}", summary="A sweep: children with status, and the leaderboard",
            responses={**_NOT_FOUND, **ERROR_RESPONSES})
def read(sweep_id: SweepId, session: SessionDep, caller: CallerDep) -> SweepOut:
    return SweepOut.from_sweep(load_sweep(session, sweep_id, caller.scope))


@router.post("/{sweep_id}/cancel", **write_route(202, summary="Cancel every unfinished child (and teacher)",
                                                responses={**_NOT_FOUND, **WRITE_ERROR_RESPONSES}))
def cancel(sweep_id: SweepId, session: SessionDep, caller: CallerDep) -> SweepOut:
    load_sweep(session, sweep_id, caller.scope)
    return SweepOut.from_sweep(cancel_sweep(session, sweep_id, caller.scope))


@router.get("/{sweep_id}/leaderboard.csv", response_class=PlainTextResponse,
            summary="The leaderboard as CSV (mean and std over seeds)",
            responses={200: {"content": {"text/csv": {"example": LEADERBOARD_CSV_EXAMPLE}}},
                       **as_json_errors({**_NOT_FOUND, **ERROR_RESPONSES})})
def leaderboard_csv_file(sweep_id: SweepId, session: SessionDep, caller: CallerDep) -> Response:
    sweep = load_sweep(session, sweep_id, caller.scope)
    return Response(leaderboard_csv(sweep_leaderboard(sweep)), media_type="text/csv",
                    headers={"Content-Disposition": f'inline; filename="{sweep.id}-leaderboard.csv"'})


@router.get("/{sweep_id}/report", response_class=HTMLResponse, summary="The sweep report page (self-contained HTML)",
            responses={200: {"content": {"text/html": {"example": "<!doctype html><html>...leaderboard...</html>"}}},
                       **as_json_errors({**_NOT_FOUND, **ERROR_RESPONSES})})
def report(sweep_id: SweepId, session: SessionDep, caller: CallerDep) -> HTMLResponse:
    return HTMLResponse(render_report(SweepOut.from_sweep(load_sweep(session, sweep_id, caller.scope))))


_EVENTS_EXAMPLE = (
    "retry: 2000\nevent: job\nid: 1\ndata: {\"id\": \"job_0a1b2c3d4e5f6a7b\", \"status\": \"running\", ...}\n\n"
    "event: sweep\nid: 2\ndata: {\"id\": \"swp_5f0c2a9d3e1b4c7a\", \"status\": \"running\", ...}\n\n"
)


def _existing_sweep_id(sweep_id: SweepId, session: SessionDep, caller: CallerDep) -> str:
    load_sweep(session, sweep_id, caller.scope)
    return sweep_id


@router.get("/{sweep_id}/events", response_class=EventSourceResponse,
            summary="Stream the children's state changes (Server-Sent Events)",
            description="`event: job` with the child (or teacher) whenever its status or stage changes, "
            "`event: sweep` with the sweep summary when its own status changes; ends when every job ended.",
            responses={200: {"content": {"text/event-stream": {"example": _EVENTS_EXAMPLE}}},
                       **as_json_errors({**_NOT_FOUND, **ERROR_RESPONSES})})
async def events(
    request: Request, sweep_id: Annotated[str, Depends(_existing_sweep_id)], sessions: SessionMakerDep,
    state: StateDep,
) -> AsyncIterator[ServerSentEvent]:
    async for event in sweep_events(request, sessions, sweep_id, state.event_stream):
        yield event
