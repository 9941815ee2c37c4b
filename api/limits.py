"""Request-body limits enforced before any parsing: size (413) and JSON nesting depth (422).

FastAPI reads a JSON body whole and hands it to `json.loads`, so a 1 GB body or
a body of 100 000 `[` would cost memory or a RecursionError before a route ran.
This pure ASGI middleware reads at most DISTILL_MAX_JSON_KB (+1 byte) of any
non-multipart body, answers 413 past that without reading on, checks the
nesting depth with a scan that never recurses, and replays the bytes to the app.
Multipart uploads stream under their own cap (api.uploads) and pass untouched.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# String literals (escapes included) hold no structure: dropped before counting brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, without parsing it (malformed text still gets a number)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b'""', body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _is_json(scope: Scope) -> bool:
    media_type = _header(scope, b"content-type").split(";", 1)[0].strip().lower()
    return media_type in ("", "application/json") or media_type.endswith("+json")


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class BodyLimitMiddleware:
    """413 `body_too_large` above `max_bytes`, 422 `json_too_deep` above `max_depth`; multipart excepted."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if _header(scope, b"content-type").lower().startswith("multipart/"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body, more = await self._read(receive)
        if len(body) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        if body and _is_json(scope) and not _utf8(body):
            await error_response(422, "invalid_json", "malformed JSON body: not UTF-8 text")(scope, receive, send)
            return
        if json_depth(body) > self.max_depth:
            message = f"the JSON body nests deeper than {self.max_depth} levels"
            await error_response(422, "json_too_deep", message)(scope, receive, send)
            return
        await self.app(scope, _replay(body, more, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, bool]:
        """At most max_bytes + 1 bytes; returns (body, whether the client still had more to send)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes:
                return b"".join(chunks), True
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body exceeds the {self.max_bytes // 1024} KB limit (DISTILL_MAX_JSON_KB)"
        # Connection: close, so the server drops the unread rest of the body instead of reading it.
        response = error_response(413, "body_too_large", message, headers={"Connection": "close"})
        await response(scope, receive, send)


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive that hands the app the bytes already read, then defers to the client's stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
