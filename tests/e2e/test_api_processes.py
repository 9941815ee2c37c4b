"""`distill api --workers 2`: two real API processes behind one port, metrics summed across them, SSE intact."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DISTILL, START_TIMEOUT_S, Process, clean_env, read_events, spawn, wait_until
from tests.services import free_port
from tests.worker.jobspecs import tiny_spec

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _metrics_folder(api: Process) -> Path:
    """The multiprocess folder the API processes share, read from a child's environment."""
    for child in _children(api.pid):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError("no API process has PROMETHEUS_MULTIPROC_DIR")


def _healthz_count(port: int) -> float:
    """One scrape on a fresh connection (so any of the processes may answer it)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    match = re.search(r'^distill_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _healthy(port: int) -> bool:
    try:
        return _get_fresh(port, "/healthz") == 200
    except httpx.TransportError:
        return False


def _get_fresh(port: int, path: str) -> int:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code


def test_two_api_processes_sum_their_metrics_and_keep_conditional_gets_and_events(tmp_path: Path) -> None:
    env = clean_env(DISTILL_HOME=str(tmp_path / "home"), DISTILL_LOG_LEVEL="INFO")
    subprocess.run([DISTILL, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    api = spawn("api", [DISTILL, "api", "--port", str(port), "--workers", "2"], env, tmp_path / "logs")
    try:
        wait_until(lambda: api.alive() and _healthy(port), START_TIMEOUT_S, f"/healthz\n{api.log()}", 0.5)
        wait_until(lambda: len(_children(api.pid)) >= 2, 30, "two API processes")
        folder = _metrics_folder(api)
        before = _healthz_count(port)

        sent = 0
        while sent < 400:  # fresh connections until both processes have answered some
            for _ in range(20):
                assert _get_fresh(port, "/healthz") == 200
            sent += 20
            writers = {path.name for path in folder.glob("counter_*.db")}
            if len(writers) >= 2:
                break
        assert len({path.name for path in folder.glob("counter_*.db")}) >= 2, "one process answered everything"

        # Every scrape, whichever process answers it, counts the requests of both.
        assert {_healthz_count(port) - before for _ in range(6)} == {float(sent)}

        # Conditional GETs and the event stream work whichever process answers.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            job = client.post("/v1/jobs", json=tiny_spec()).json()
            etag = client.get(f"/v1/jobs/{job['id']}").headers["ETag"]
            assert {_conditional(port, job["id"], etag) for _ in range(6)} == {304}
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
            events = read_events(client, job["id"], timeout_s=30)
        assert events[-1][1]["status"] == "cancelled"
    finally:
        assert api.stop(signal.SIGTERM, timeout_s=60) == 0, api.log()
    assert not folder.exists(), "the metrics folder outlived the server"


def _conditional(port: int, job_id: str, etag: str) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}", headers={"If-None-Match": etag}, timeout=10
                     ).status_code
