"""Bearer-key checks, and the rule that keeps an open API off the network.

Keys come from settings (DISTILL_API_KEYS). An empty key set means "no auth",
which is only safe on a loopback address: `check_bind_allowed` is what the CLI
calls before it starts a server.
"""

from __future__ import annotations

import hmac
import ipaddress

from store.settings import Settings

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class InsecureBindError(RuntimeError):
    """Refusing to serve an unauthenticated API on a non-loopback address."""


def key_matches(presented: str, keys: frozenset[str]) -> bool:
    """Compare against every key in constant time, so timing reveals neither a key nor which one matched."""
    presented_bytes = presented.encode("utf-8")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented_bytes, key.encode("utf-8"))
    return matched


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
