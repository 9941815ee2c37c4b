"""Per-key rate limits on the routes that create or change something (POST).

A token bucket per caller (the key's fingerprint; the client address when the
service runs without keys) refills at DISTILL_RATE_LIMIT_PER_MIN per minute and
holds that many tokens, so a client may burst up to a minute's allowance. Over
the limit: 429 `rate_limited` with Retry-After. The buckets live in the API
process; with several API processes each enforces the limit on its own share.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from api.deps import CallerDep, StateDep
from api.errors import ApiError

MAX_BUCKETS = 100_000  # forget idle callers beyond this many, oldest first


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets keyed by caller; thread-safe (several apps may share a process, and tests call it from threads)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate_per_s = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """Spend one token; returns 0 when allowed, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(caller, None) or _Bucket(self.capacity, now)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated_s) * self.rate_per_s)
            bucket.updated_s = now
            self._buckets[caller] = bucket  # re-inserted: the dict stays in least-recently-used order
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.pop(next(iter(self._buckets)))
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate_per_s


async def rate_limit(request: Request, state: StateDep, caller: CallerDep) -> None:
    """Dependency of every POST route: 429 with Retry-After once the caller's allowance is spent.

    `async`: a few dictionary operations under a lock, cheaper than FastAPI's hop to the thread
    pool and back that a sync dependency costs on every POST."""
    settings = state.settings
    if settings.rate_limit_per_min <= 0:
        return
    limiter = state.rate_limiter
    if limiter is None or limiter.capacity != settings.rate_limit_per_min:
        limiter = state.rate_limiter = RateLimiter(settings.rate_limit_per_min)
    who = caller.owner or f"addr:{request.client.host if request.client else 'unknown'}"
    wait_s = limiter.take(who)
    if wait_s > 0:
        raise ApiError(
            429, "rate_limited",
            f"more than {settings.rate_limit_per_min} requests a minute to this route group; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )  # fmt: skip


def write_route(status_code: int, **options: Any) -> dict[str, Any]:
    """The decorator options of a route that creates or changes something: its success status and `rate_limit`.

    Every POST route takes them from here, so none can be added without the limit; `options` are the
    route's own (summary, responses, ...), passed on to the decorator unchanged.
    """
    return {"status_code": status_code, "dependencies": [Depends(rate_limit)], **options}
