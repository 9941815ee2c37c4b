"""The polling routes' fast path: plain GETs answered without FastAPI's per-request machinery.

A dashboard polls `GET /v1/jobs/{id}` (and the list) once a second per user, and
orchestrators probe `/healthz`. Profiled (cProfile, in-process ASGI calls), FastAPI
spent more on such a request than the work itself: solving the route's dependency
tree (the caller, the bearer scheme, settings, the path, query and header
parameters) was about 40 % of a cached job poll, response handling and the route
match most of the rest; a bare Starlette app answers `/healthz` in a tenth of the time.

So each of these routes has a twin registered before the documented FastAPI route.
The twin matches only a *plain* request (GET, parameters that are present are
well-formed by the same rules as the documented route, no repeated parameters) and
calls the very same read function (api.polls); anything else (a bad id, an unknown query
parameter, a HEAD) does not match here and falls through to the FastAPI route,
which validates it and answers exactly as before (422, 405, ...). The caller comes
from the API-key middleware, which ran before the router. OpenAPI still documents
the FastAPI routes; the answers are the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from api.documents import JobView
from api.polls import (
    CURSOR_MAX_LENGTH, IF_NONE_MATCH_MAX_LENGTH, JOB_ID_MAX_LENGTH, JOB_ID_PATTERN, PAGE_DEFAULT_LIMIT,
    PAGE_MAX_LIMIT, poll_job, poll_page,
)
from api.routes import API_V1
from api.state import AppState
from store.models import JobStatus

Answer = Callable[[Scope], Awaitable[Response]]
# (scope, path parameters) -> how to answer, or None when the request is not plain (FastAPI's route takes it).
Prepare = Callable[[Scope, dict[str, Any]], Answer | None]

_JOB_ID = re.compile(JOB_ID_PATTERN)
_VIEWS = {view.value: view for view in JobView}
_STATUSES = {status.value: status for status in JobStatus}
_FAST_SCOPE_KEY = "distill.fast_answer"
HEALTH_BODY = b'{"status":"ok"}'  # api.schemas.HealthOut(status="ok"), as FastAPI would encode it


class FastRoute(Route):
    """A GET route that matches only what `prepare` accepts; otherwise the next route (FastAPI's) matches."""

    def __init__(self, path: str, prepare: Prepare) -> None:
        super().__init__(path, self._unused, methods=["GET"], include_in_schema=False)
        self.prepare = prepare

    @staticmethod
    async def _unused(request: Any) -> Response:  # pragma: no cover - handle() answers instead
        raise AssertionError("FastRoute answers in handle()")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope.get("method") != "GET":
            return Match.NONE, {}
        match, child_scope = super().matches(scope)
        if match is not Match.FULL:
            return Match.NONE, {}
        answer = self.prepare(scope, child_scope["path_params"])
        if answer is None:
            return Match.NONE, {}
        # "route" labels the request in the metrics (api.metrics) by this template, as FastAPI's route would.
        return Match.FULL, {**child_scope, "route": self, _FAST_SCOPE_KEY: answer}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await scope[_FAST_SCOPE_KEY](scope)
        await response(scope, receive, send)


def _single_header(scope: Scope, name: bytes) -> tuple[bool, str | None]:
    """(plain, value): not plain when the header is repeated or longer than the documented limit."""
    found = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if not found:
        return True, None
    if len(found) > 1 or len(found[0]) > IF_NONE_MATCH_MAX_LENGTH:
        return False, None
    return True, found[0].decode("latin-1")


def _query(scope: Scope, allowed: frozenset[str]) -> dict[str, str] | None:
    """The query parameters, or None when one is unknown, repeated or blank."""
    raw = scope.get("query_string", b"")
    if not raw:
        return {}
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs) or not allowed.issuperset(params) or not all(params.values()):
        return None
    return params


def _caller_scope(scope: Scope) -> tuple[bool, str | None]:
    """(known, owner scope) from the API-key middleware's verdict."""
    caller = scope.get("state", {}).get("caller")
    return (caller is not None), (caller.scope if caller is not None else None)


def _state(scope: Scope) -> AppState:
    """The app's typed state (api.state), as `api.deps.get_state` gives it to the documented routes."""
    state: AppState = scope["app"].state
    return state


def _prepare_health(scope: Scope, path_params: dict[str, Any]) -> Answer:
    async def answer(scope: Scope) -> Response:
        return Response(HEALTH_BODY, media_type="application/json")

    return answer


def _prepare_job(scope: Scope, path_params: dict[str, Any]) -> Answer | None:
    job_id = path_params.get("job_id", "")
    params = _query(scope, frozenset({"view"}))
    plain_header, if_none_match = _single_header(scope, b"if-none-match")
    known, owner = _caller_scope(scope)
    if (not known or params is None or not plain_header or not 0 < len(job_id) <= JOB_ID_MAX_LENGTH
            or not _JOB_ID.match(job_id) or params.get("view", "full") not in _VIEWS):
        return None
    view = _VIEWS[params.get("view", "full")]

    async def answer(scope: Scope) -> Response:
        return await poll_job(_state(scope), job_id=job_id, view=view, if_none_match=if_none_match, owner=owner)

    return answer


def _prepare_page(scope: Scope, path_params: dict[str, Any]) -> Answer | None:
    params = _query(scope, frozenset({"status", "limit", "cursor", "view"}))
    plain_header, if_none_match = _single_header(scope, b"if-none-match")
    known, owner = _caller_scope(scope)
    if not known or params is None or not plain_header:
        return None
    limit_text = params.get("limit", str(PAGE_DEFAULT_LIMIT))
    cursor = params.get("cursor")
    if (not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= PAGE_MAX_LIMIT
            or params.get("status", "queued") not in _STATUSES or params.get("view", "full") not in _VIEWS
            or (cursor is not None and len(cursor) > CURSOR_MAX_LENGTH)):
        return None
    status = _STATUSES[params["status"]] if "status" in params else None
    limit, view = int(limit_text), _VIEWS[params.get("view", "full")]

    async def answer(scope: Scope) -> Response:
        return await poll_page(_state(scope), status=status, limit=limit, cursor=cursor, view=view,
                               if_none_match=if_none_match, owner=owner)

    return answer


def add_fast_routes(app: FastAPI) -> None:
    """Register the twins; call before the documented routes are included, so they are tried first."""
    app.router.routes.extend([
        FastRoute("/healthz", _prepare_health),
        FastRoute(f"{API_V1}/jobs", _prepare_page),
        FastRoute(f"{API_V1}/jobs/{{job_id}}", _prepare_job),
    ])
