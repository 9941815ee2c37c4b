"""One error shape for every failure: `{"error": {"code", "message", "field"}}`.

Clients branch on `code` (stable), show `message` to a person, and use `field`
(a dotted path into the request, e.g. `student.arch`) to point at the input to
fix. Bad input is always a 4xx; a 500 means a bug, is logged with its traceback
and never leaks it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.services.errors import UploadChecksBusy
from core.errors import DistillError, is_storage_full
from core.redact import scrub_paths
from store.artifacts import redact_paths
from store.models import TERMINAL_STATUSES
from store.repository import IdempotencyConflict, IllegalTransition, NotFound
from store.storage import StorageError

log = logging.getLogger(__name__)

# Generic codes for framework-raised HTTP errors (unknown route, wrong method, ...).
_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}

# How long a client should wait before retrying while the database is unreachable (a restart, a failover).
DATABASE_RETRY_AFTER_S = 5

# Where a request value came from; the first element of a pydantic `loc`, dropped from `field`.
_LOC_SOURCES = {"body", "query", "path", "header", "cookie"}


class ApiError(Exception):
    """An error the API raises on purpose, rendered as the standard error body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status_code: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status_code, headers=dict(headers or {}))


def field_from_loc(loc: Sequence[Any]) -> str | None:
    """('body', 'student', 'arch') -> 'student.arch'; ('query', 'limit') -> 'limit'."""
    parts = list(loc)
    if parts and parts[0] in _LOC_SOURCES:
        parts = parts[1:]
    return ".".join(str(part) for part in parts) or None


def _validation_message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    # pydantic prefixes messages raised in validators with "Value error, "; it adds nothing for a client.
    return message.removeprefix("Value error, ")


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = errors[0].get("ctx", {}).get("error") or "the body is not valid JSON"
        return error_response(422, "invalid_json", f"malformed JSON body: {detail}")
    if not errors:
        return error_response(422, "validation_error", "the request is invalid")
    first = errors[0]
    field = field_from_loc(first.get("loc", ()))
    messages = []
    for error in errors:
        where = field_from_loc(error.get("loc", ()))
        messages.append(f"{where}: {_validation_message(error)}" if where else _validation_message(error))
    return error_response(422, "validation_error", "; ".join(messages), field)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _on_not_found(request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", str(exc) or "not found")


async def _on_illegal_transition(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IllegalTransition)
    finished = str(getattr(exc.current, "value", exc.current)) in {status.value for status in TERMINAL_STATUSES}
    code = "job_finished" if finished else "illegal_transition"
    return error_response(409, code, str(exc))


async def _on_idempotency_conflict(request: Request, exc: Exception) -> JSONResponse:
    message = "this Idempotency-Key was already used with a different request body"
    return error_response(409, "idempotency_conflict", message, "Idempotency-Key")


async def _on_distill_error(request: Request, exc: Exception) -> JSONResponse:
    """Where domain errors become HTTP, once: core.errors and api.services.errors carry the code and field.

    Every one is the client's input to fix (a spec, a form value, an uploaded file), so 422;
    the services raise them without knowing about HTTP, and a route needs no try/except. The message
    passes the path rule once more (store.artifacts.redact_paths): a library's text may have slipped in."""
    assert isinstance(exc, DistillError)
    settings = getattr(request.app.state, "settings", None)
    message = redact_paths(exc.message, settings) if settings is not None else scrub_paths(exc.message)
    return error_response(422, exc.code, message, exc.field)


async def _on_storage_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("storage failed on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "storage_unavailable", "the file store did not answer; retry shortly")


async def _on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Connection refused, reset or pool exhausted: the request was fine, the database was not there."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(
        503, "database_unavailable", "the database is unreachable; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )  # fmt: skip


async def _on_checks_busy(request: Request, exc: Exception) -> JSONResponse:
    """Every dataset-check slot is taken: the upload was fine, the server is busy; retry later."""
    assert isinstance(exc, UploadChecksBusy)
    return error_response(503, "upload_checks_busy", str(exc), "file", headers={"Retry-After": str(exc.retry_after_s)})


def storage_full_response() -> JSONResponse:
    return error_response(507, "storage_full", "the server's data folder is full; nothing was stored")


async def _on_os_error(request: Request, exc: Exception) -> JSONResponse:
    """A full data folder is the operator's problem, not a bug: 507 with a code, no traceback."""
    if is_storage_full(exc):
        log.error("data folder full on %s %s: %s", request.method, request.url.path, exc)
        return storage_full_response()
    return await _on_unexpected(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; the incident was logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(NotFound, _on_not_found)
    app.add_exception_handler(IllegalTransition, _on_illegal_transition)
    app.add_exception_handler(IdempotencyConflict, _on_idempotency_conflict)
    app.add_exception_handler(DistillError, _on_distill_error)
    app.add_exception_handler(StorageError, _on_storage_error)
    app.add_exception_handler(UploadChecksBusy, _on_checks_busy)
    for database_error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(database_error, _on_database_unavailable)
    app.add_exception_handler(OSError, _on_os_error)
    app.add_exception_handler(Exception, _on_unexpected)

