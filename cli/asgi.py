"""The ASGI app factory each API process imports when `distill api --workers N` runs several.

uvicorn starts each worker process fresh and imports the app by name, so logging
is set up here, in the process that serves, from the same settings as the parent.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from store.settings import get_settings
from worker.logsetup import configure_logging


def api_process_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
