"""The dashboard: plain HTML/CSS/JS (no build step, nothing fetched from elsewhere) served at /ui by the API app.

The page is a client of the same public /v1 API. Its files are served with a strict
Content-Security-Policy: scripts, styles and connections only from this origin;
images also from blob: URLs, because heatmaps are fetched with the API key in a
header and shown from memory, so the key never appears in a URL, a log or history.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).with_name("static")
UI_PATH = "/ui"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files are small and change with the code: revalidate each time (ETag/Last-Modified keep it cheap).
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """Static files with the dashboard's security headers on every response."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_dashboard(app: FastAPI) -> None:
    """`/ui/` serves the page; `/` sends a browser there. Open like /healthz: the page holds no data, and the
    API calls it makes carry the key the person types in."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def dashboard_root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/", status_code=307)

    app.mount(UI_PATH, DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")
