"""Conditional GETs: ETags from the job rows' version counters, 304 when the client's copy is current.

Every change a client can see bumps `jobs.version` (store.repository), so
`(id, version, view)` names one representation of a job exactly: a poller that
sends `If-None-Match` gets `304 Not Modified` with no body until the job moves,
and the server answers it from one indexed lookup without building the body.
A list's ETag is a digest of its page: the ids and versions of its rows, the
next cursor and the view, so any change to any row on the page (or the page's
membership) changes it.

`Cache-Control: no-cache` lets caches store the response but makes them ask
again every time: a job's state is never served stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from starlette.responses import Response

CACHE_CONTROL = "no-cache"
JSON = "application/json"
# Bumped when a job document's shape changes, so no client keeps a body of the old shape on a 304.
DOCUMENT_REVISION = 1


def job_etag(job_id: str, version: int, view: str) -> str:
    return f'"{job_id}.{version}.{view}.{DOCUMENT_REVISION}"'


def page_etag(rows: Iterable[tuple[str, int]], next_cursor: str | None, view: str) -> str:
    listed = ";".join(f"{job_id}.{version}" for job_id, version in rows)
    text = f"{listed}|{next_cursor}|{view}|{DOCUMENT_REVISION}"
    return f'"p.{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison against an `If-None-Match` list (`*` matches any current representation)."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def not_modified(etag: str) -> Response:
    """304 carries the validator and caching headers of the 200 it stands for, and no body."""
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})


def json_response(body: bytes, etag: str | None = None, status_code: int = 200) -> Response:
    headers = {"Cache-Control": CACHE_CONTROL}
    if etag is not None:
        headers["ETag"] = etag
    return Response(content=body, status_code=status_code, media_type=JSON, headers=headers)
