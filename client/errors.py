"""What can go wrong when talking to the service, as exceptions a caller can branch on.

Every server error has the same body, `{"error": {"code", "message", "field"}}`;
`ApiError` carries those three fields so a CLI or a notebook can show the
server's own words instead of a traceback.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class: anything the client raises on purpose."""

    code: str = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ApiError(ClientError):
    """The server answered with an error status and (normally) the standard error body."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.field = field

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.code}: {self.message}{where}"


class ConnectionFailed(ClientError):
    """No HTTP answer at all: refused, unreachable, timed out or cut mid-response."""

    code = "connection_failed"
