"""Bearer keys: who is calling, checked before anything else reads the request.

Keys come from settings (DISTILL_API_KEYS, DISTILL_ADMIN_KEYS) and are compared in
constant time. What the database stores as a record's owner is never the key but
its fingerprint, an HMAC-SHA256 under DISTILL_KEY_HASH_SECRET, so a leaked
database does not leak keys. An empty key set means "no auth", which is only safe
on a loopback address: `check_bind_allowed` is what the CLI calls before it
starts a server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError, error_response
from api.routes import API_V1
from store.settings import Settings

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
# Salt for the fingerprints when the operator sets no secret: still keyed, never the bare key.
_DEFAULT_FINGERPRINT_SECRET = b"distill-key-fingerprint-v1"


class InsecureBindError(RuntimeError):
    """Refusing to serve an unauthenticated API on a non-loopback address."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request. `owner` is the key's fingerprint (None without keys); admins see every record."""

    owner: str | None
    admin: bool = False

    @property
    def sees_all(self) -> bool:
        return self.owner is None or self.admin

    @property
    def scope(self) -> str | None:
        """The owner a query is limited to, or None for everything."""
        return None if self.sees_all else self.owner


ANONYMOUS = Caller(owner=None)


def key_matches(presented: str, keys: frozenset[str]) -> bool:
    """Compare against every key in constant time, so timing reveals neither a key nor which one matched."""
    presented_bytes = presented.encode("utf-8")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_bytes, key.encode("utf-8"))
    return matched


def key_fingerprint(key: str, settings: Settings) -> str:
    """What is stored as a record's owner: HMAC-SHA256 of the key, hex (64 characters)."""
    secret = settings.key_hash_secret.encode("utf-8") or _DEFAULT_FINGERPRINT_SECRET
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def authenticate(authorization: str | None, settings: Settings) -> Caller:
    """The caller behind an Authorization header; ApiError 401 when keys are on and it holds no valid one."""
    keys = settings.api_key_set
    if not keys:
        return ANONYMOUS
    scheme, _, presented = (authorization or "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented or not key_matches(presented, keys):
        raise ApiError(
            401, "unauthorized", "a valid 'Authorization: Bearer <key>' header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return Caller(owner=key_fingerprint(presented, settings), admin=key_matches(presented, settings.admin_key_set))


class ApiKeyMiddleware:
    """Refuses `/v1` requests without a valid key before any body is read or validated.

    Without it an unauthenticated client would learn from a 413 or a 422 how the API
    parses bodies. The caller is left in `scope["state"]["caller"]` for the routes.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_versioned(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        authorization = next(
            (value.decode("latin-1") for key, value in scope.get("headers", []) if key.lower() == b"authorization"),
            None,
        )
        try:
            caller = authenticate(authorization, self.settings)
        except ApiError as exc:
            await error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def _is_versioned(path: str) -> bool:
    return path == API_V1 or path.startswith(API_V1 + "/")


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, settings: Settings) -> None:
    """Raise InsecureBindError when `host` is reachable from other machines and no API key is set."""
    if settings.api_key_set or is_loopback(host):
        return
    raise InsecureBindError(
        f"refusing to listen on {host!r} without API keys: anyone who can reach it could run jobs. "
        "Set DISTILL_API_KEYS (comma-separated bearer keys) or bind to 127.0.0.1."
    )
