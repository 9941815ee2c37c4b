"""Helpers for the process-fault tests: artifacts that must be whole, a load generator, private stacks."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from safetensors.torch import load as load_safetensors

from store.settings import Settings
from tests.e2e.conftest import FAST_ENV, Stack, clean_env
from tests.worker.jobspecs import tiny_spec


def small_spec(name: str) -> dict[str, Any]:
    """About a second of work: 8 px digits, 5 shots per class, one epoch each, plain KD, one heatmap."""
    return tiny_spec(name=name, shots_per_class=5, dataset={"image_size": 8}, method="kd",
                     report={"heatmaps": 1, "latency_runs": 1})


def assert_artifacts_complete(client: httpx.Client, job: dict[str, Any]) -> int:
    """Every listed artifact downloads whole (its recorded size) and parses as what its name says."""
    assert job["artifacts"], f"job {job['id']} lists no artifacts"
    names = [artifact["name"] for artifact in job["artifacts"]]
    assert "student.safetensors" in names and "metrics.json" in names, names
    for artifact in job["artifacts"]:
        assert not artifact["name"].endswith((".tmp", ".part")), artifact
        response = client.get(artifact["url"])
        assert response.status_code == 200, (artifact, response.text[:200])
        body = response.content
        assert len(body) == artifact["size_bytes"], artifact
        if artifact["name"].endswith(".safetensors"):
            assert load_safetensors(body), artifact
        elif artifact["name"].endswith(".json"):
            json.loads(body)
        elif artifact["name"].endswith(".png"):
            Image.open(io.BytesIO(body)).verify()
    return len(names)


def private_stack(home: Path, database_url: str, broker_url: str, **extra_env: str) -> Stack:
    """A Stack on a broker and database the test owns (to stop and start them)."""
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env(**{"DISTILL_HOME": str(home), "DATABASE_URL": database_url, "BROKER_URL": broker_url,
                       **FAST_ENV, **extra_env})
    return Stack(home=home, database_url=database_url, broker_url=broker_url, env=env)


class LoadThread(threading.Thread):
    """Polls the API (list, one job, submit) as fast as it can and tallies the status codes it gets."""

    def __init__(self, base_url: str, job_id: str, spec: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=30)
        self.job_id, self.spec = job_id, spec
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.missing_retry_after = 0
        self.timeline: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        requests = [("GET", "/v1/jobs", None), ("GET", f"/v1/jobs/{self.job_id}", None), ("POST", "/v1/jobs", self.spec)]
        turn = 0
        while not self._halt.is_set():
            method, url, body = requests[turn % len(requests)]
            turn += 1
            try:
                response = self.client.request(method, url, json=body)
            except httpx.TransportError:
                self.statuses[0] += 1
                continue
            self.statuses[response.status_code] += 1
            self.timeline.append((time.monotonic(), response.status_code))
            if response.status_code >= 400:
                self.codes[response.json()["error"]["code"]] += 1
            if response.status_code == 503 and "retry-after" not in response.headers:
                self.missing_retry_after += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        self.client.close()


def settings_of(stack: Stack) -> Settings:
    return stack.settings
