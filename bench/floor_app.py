"""The floor of the HTTP stack: a bare Starlette app on uvicorn answering GET /healthz with the same JSON.

`bench/service_speed.py` serves it next to the API (`python -m uvicorn --app-dir bench floor_app:app`)
so `/healthz` of the real app can be compared with what uvicorn + Starlette alone cost per request.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/healthz", healthz)])
