"""A real `distill serve` (embedded defaults: SQLite, filesystem broker) for client, CLI and browser tests.

`Served` can be stopped and started again on the same port and data folder, which
is how the tests cut a client's connection mid-stream the way a server restart does.
"""

from __future__ import annotations

import copy
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import DISTILL, FAST_ENV, START_TIMEOUT_S, Process, clean_env, spawn, wait_until
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def tiny_demo_spec(name: str = "demo-tiny", *, epochs: int = 1, shots_per_class: int = 10,
                   teacher_epochs: int = 1) -> dict[str, Any]:
    """The README's demo spec (examples/digits-e2kd.json) with tiny settings: seconds on one core."""
    spec = copy.deepcopy(json.loads((ROOT / "examples" / "digits-e2kd.json").read_text()))
    spec["name"] = name
    spec["dataset"].update(image_size=16, shots_per_class=shots_per_class)
    spec["teacher"]["epochs"] = teacher_epochs
    spec["training"].update(epochs=epochs, device="cpu")
    spec["report"] = {"heatmaps": 2, "latency_runs": 2}
    return spec


@dataclass
class Served:
    home: Path
    logs: Path
    port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return clean_env(DISTILL_HOME=str(self.home), **FAST_ENV, **self.env_extra)

    def start(self) -> None:
        self.process = spawn("serve", [DISTILL, "serve", "--port", str(self.port)], self.env, self.logs)
        client = httpx.Client(base_url=self.url, timeout=10, headers=self.auth_headers())
        try:
            wait_until(lambda: self._ready(client), START_TIMEOUT_S, f"distill serve to be ready\n{self.log()}", 0.5)
        finally:
            client.close()

    def auth_headers(self) -> dict[str, str]:
        key = self.env_extra.get("DISTILL_API_KEYS", "").split(",")[0]
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _ready(self, client: httpx.Client) -> bool:
        assert self.process is not None and self.process.alive(), f"distill serve exited:\n{self.log()}"
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> int:
        assert self.process is not None
        return self.process.stop(signal.SIGTERM, timeout_s=60)

    def log(self) -> str:
        return self.process.log()[-8000:] if self.process else ""


def start_served(home: Path, **env_extra: str) -> Served:
    served = Served(home=home, logs=home.parent / f"{home.name}-logs", env_extra=dict(env_extra))
    served.start()
    return served
