"""Service speed and scale: HTTP latency before/after, the API next to training, queue latency, scale-out.

    python bench/service_speed.py                      # every part (quiet machine)
    python bench/service_speed.py --quick              # smoke test: 5 clients x 3 s, tiny jobs
    python bench/service_speed.py --parts load training   # one or more: load, polls, training, queue, scale, sweep, storage

Everything runs on loopback, in processes this script starts and stops: `distill api` /
`distill serve` / `distill worker`, a bare Starlette app (bench/floor_app.py), and for the
production rows a throwaway PostgreSQL and Redis (tests/services.py). Each stack gets its own
DISTILL_HOME under bench/.cache/.

1. Load, before and after: the `--baseline` commit (the service before the API speed work,
   unpacked under bench/.cache/ with git archive) and this tree are served side by side, each
   by one `distill api` process on its own database, and measured back to back, so machine
   load hits both alike. Rows: one client (sequential keep-alive GETs of /healthz, a job and a
   20-job list; median latency and the server's CPU time per request, next to the floor:
   bare Starlette + uvicorn returning the same /healthz JSON); paced (`--clients` clients, each
   one request then `--think-ms` pause, like dashboards polling: p99 of GET job, GET list, POST);
   closed loop (clients back to back: requests/s and p99 of GET job). The load client is a
   bounded asyncio client on raw keep-alive HTTP/1.1, so it spends little of the 2 cores.
   Paced clients start spread evenly over one pause (`--together`: all at once, a burst each second).
1c. Polls (this tree only): closed-loop and paced rows of conditional GETs (If-None-Match -> 304) of a
   job and of a page, of the summary view, and of `distill api --workers 2` next to one process.
2. Training: paced GET job against a job that is training in the same `distill serve`,
   before and after (the after side runs training niced, with the cores the API leaves).
3. Queue latency: POST a tiny job to an idle `distill serve` and time it to `running`, from
   the server's own timestamps (started_at - created_at) and as the polling client saw it.
4. Scale-out: 4 equal jobs on 1 worker process vs 2 (DISTILL_TORCH_THREADS=1), from the first
   POST until the last job succeeded.
5. Sweep: one sweep of 8 equal children (a grid over training.seed; the teacher trained once by
   the sweep's teacher job) on 1 worker process vs 2, from the POST until the last child ended.
6. Storage: the same tiny job on `distill serve` with artifacts under DISTILL_HOME vs in an
   S3-compatible store (moto_server on loopback), alternating; the per-job difference is the
   cost of pulling/pushing checkpoints and artifacts through the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import common

DISTILL = str(Path(sys.executable).with_name("distill"))
SERVICE_DIR = common.CACHE_DIR / "service"
HOST = "127.0.0.1"
_redis_databases = iter(range(1, 16))  # each stack its own Redis database: no stack's worker sees another's messages
ORPHANS: list[str] = []
# The service before the API speed work (issue 9): the "before" rows of the load and training parts.
BASELINE_COMMIT = "ad75b75"


def redis_url(redis: Any) -> str:
    return redis.url.rsplit("/", 1)[0] + f"/{next(_redis_databases)}"
TINY_JOB: dict[str, Any] = {
    "name": "bench-tiny",
    "dataset": {"name": "digits", "image_size": 16},
    "teacher": {"arch": "cnn", "epochs": 1},
    "student": {"arch": "cnn"},
    "method": "kd",
    "training": {"epochs": 1, "batch_size": 128},
    "report": {"heatmaps": 0, "latency_runs": 1},
}


def scale_job(epochs: int) -> dict[str, Any]:
    """One of the 4 equal scale-out jobs: digits, resnet8 teacher and student, e2kd."""
    return {
        "name": "bench-scale",
        "dataset": {"name": "digits"},
        "teacher": {"arch": "resnet8", "epochs": epochs},
        "student": {"arch": "resnet8"},
        "method": "e2kd",
        "training": {"epochs": epochs, "batch_size": 64},
        "report": {"heatmaps": 0, "latency_runs": 1},
    }


# --- processes -------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any distill setting, plus `extra` (so a developer's settings do not leak in)."""
    from store.settings import Settings

    names = {f.alias for f in Settings.model_fields.values() if f.alias}
    env = {key: value for key, value in os.environ.items() if key not in names}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "DISTILL_LOG_LEVEL": "WARNING", **extra}


@dataclass
class Stack:
    """The processes of one service stack, and where to reach its API."""

    home: Path
    env: dict[str, str]
    port: int
    processes: list[subprocess.Popen[bytes]]
    code: Path = common.REPO_ROOT  # the source tree: also the working directory (celery imports from it first)
    orphaned: int = 0  # worker processes that outlived their parent (a shutdown bug, reported in the notes)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.run_command(name, [DISTILL, *args])

    def run_command(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it until it ends
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.code)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM what this script started, and the worker processes those started (by pid), then wait.

        The workers of `distill serve` run in their own session; they are collected before the
        parent stops, so they are stopped even if the parent exits without stopping them.
        """
        children = [pid for process in self.processes for pid in child_pids(process.pid)]
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        orphans = [pid for pid in children if pid_alive(pid)]
        if orphans:
            common.log.warning("%d worker process(es) outlived their parent; stopping them: %s", len(orphans), orphans)
            self.orphaned += len(orphans)
        for pid in orphans:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(pid_alive(pid) for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in orphans:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.processes.clear()


def child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, from /proc (Linux)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == parent:
            pids.append(int(entry.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@contextlib.contextmanager
def stack(label: str, database_url: str | None, broker_url: str | None, extra_env: dict[str, str] | None = None,
          code: Path = common.REPO_ROOT) -> Iterator[Stack]:
    """A stack's folder and environment; `code` is the source tree its processes import (a baseline or this one)."""
    from tests.services import free_port

    home = SERVICE_DIR / label
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = clean_env(DISTILL_HOME=str(home), PYTHONPATH=str(code), **(extra_env or {}))
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["BROKER_URL"] = broker_url
    running = Stack(home, env, free_port(), [], code)
    try:
        yield running
    finally:
        running.stop()
        if running.orphaned:
            ORPHANS.append(f"{label}: {running.orphaned} worker process(es) outlived their parent after SIGTERM")


def wait_healthy(base: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {base} did not become healthy in {timeout_s:.0f} s")


def http_json(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def servers(needed: bool) -> Iterator[tuple[Any, Any]]:
    """A throwaway PostgreSQL and Redis on loopback (the tests' own fixtures), or nothing."""
    if not needed:
        yield None, None
        return
    from tests.services import postgres_server, redis_server

    with postgres_server() as postgres, redis_server() as redis:
        yield postgres, redis


# --- the load client -------------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for JSON requests to uvicorn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: application/json\r\n{headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        return status

    def close(self) -> None:
        self.writer.close()


async def load(port: int, method: str, paths: list[str], body: bytes, clients: int, seconds: float,
               think_s: float, warmup_s: float, headers: dict[str, str] | None = None,
               together: bool = False) -> dict[str, Any]:
    """`clients` concurrent keep-alive clients for warm-up + `seconds`; latencies of the measured window only.

    Paced clients (`think_s` > 0) start spread evenly over one pause, as independent dashboards
    polling once a second do; `together` starts them all at once instead, so every second brings a
    burst of `clients` simultaneous requests. `headers` maps a path to extra request header lines
    (e.g. its If-None-Match)."""
    latencies_ms: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    started = time.perf_counter()
    measure_from, stop_at = started + warmup_s, started + warmup_s + seconds

    async def client(index: int) -> None:
        nonlocal errors
        connection = await Connection.open(port)
        count = index
        if think_s and not together:
            await asyncio.sleep(think_s * index / clients)
        try:
            while (now := time.perf_counter()) < stop_at:
                path = paths[count % len(paths)]
                count += 1
                try:
                    status = await connection.request(method, path, body, (headers or {}).get(path, ""))
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    connection.close()
                    connection = await Connection.open(port)
                    continue
                done = time.perf_counter()
                if now >= measure_from:
                    latencies_ms.append((done - now) * 1000)
                    statuses[status] += 1
                if think_s:
                    await asyncio.sleep(think_s)
        finally:
            connection.close()

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), timeout=warmup_s + seconds + 60)
    return {
        "requests": len(latencies_ms),
        "throughput_rps": len(latencies_ms) / seconds,
        "p50_ms": common.percentile(latencies_ms, 50),
        "p99_ms": common.percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=float("nan")),
        "statuses": dict(statuses),
        "errors": errors,
    }


# --- part 1: HTTP load, before and after, side by side ---------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One code tree under test: the baseline commit ("before") or this working tree ("after")."""

    label: str
    code: Path


def baseline_tree(commit: str) -> Path:
    """The baseline commit's files under bench/.cache/ (git archive: no worktree, nothing to clean up in git)."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=common.REPO_ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    target = common.CACHE_DIR / f"baseline-{sha[:12]}"
    if not (target / "cli" / "main.py").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], cwd=common.REPO_ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def versions(args: argparse.Namespace) -> list[Version]:
    short = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=common.REPO_ROOT, check=True,
                           capture_output=True, text=True).stdout.strip()
    return [Version(f"before ({short})", baseline_tree(args.baseline)), Version("after", common.REPO_ROOT)]


def backend_urls(backend: str, postgres: Any, redis: Any) -> tuple[str, str | None, str | None]:
    if backend == "sqlite":
        return "SQLite + filesystem broker", None, None
    return "PostgreSQL + Redis", postgres.url(postgres.create_database(prefix="bench")), redis_url(redis)


async def one_client(port: int, path: str, requests: int) -> list[float]:
    """Latencies (ms) of `requests` sequential GETs on one keep-alive connection."""
    connection = await Connection.open(port)
    latencies = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            status = await connection.request("GET", path)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise SystemExit(f"GET {path} answered {status}")
    finally:
        connection.close()
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): unlike latency, unmoved by other processes' load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_client_rows(args: argparse.Namespace, label: str, floor: tuple[int, int], apis: dict[str, tuple[int, int, str]]
                    ) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per target: median latency and server CPU per request; rounds interleave the targets; ratios per round.

    `floor` and each API are (port, server pid); the API entries also name a job to read.
    """
    targets: list[tuple[str, int, int, str]] = [("floor", *floor, "/healthz")]
    for version, (port, pid, job_id) in apis.items():
        targets += [(f"{version}|healthz", port, pid, "/healthz"), (f"{version}|job", port, pid, f"/v1/jobs/{job_id}"),
                    (f"{version}|list", port, pid, "/v1/jobs?limit=20")]
    medians: dict[str, list[float]] = {name: [] for name, *_ in targets}
    cpu_ms: dict[str, list[float]] = {name: [] for name, *_ in targets}
    for _ in range(args.one_client_rounds):
        for name, port, pid, path in targets:
            asyncio.run(one_client(port, path, 20))  # warm the connection path and caches
            used = cpu_seconds(pid)
            medians[name].append(common.median(asyncio.run(one_client(port, path, args.one_client_requests))))
            cpu_ms[name].append((cpu_seconds(pid) - used) * 1000 / args.one_client_requests)
    rows = [[label, "bare Starlette + uvicorn (the floor)", "GET /healthz", f"{common.median(medians['floor']):.2f}",
             "", f"{common.median(cpu_ms['floor']):.2f}", "", "", ""]]
    for version in apis:
        for what, path, target in (("healthz", "GET /healthz", 1.5), ("job", "GET /v1/jobs/{id}", 1.5),
                                   ("list", "GET /v1/jobs?limit=20", 2.0)):
            base, base_name = ("floor", "floor") if what == "healthz" else (f"{version}|healthz", "/healthz")
            name = f"{version}|{what}"
            ratio = common.median([v / b for v, b in zip(medians[name], medians[base])])
            cpu_ratio = common.median([v / b if b else float("nan") for v, b in zip(cpu_ms[name], cpu_ms[base])])
            verdict = ("met" if ratio <= target else "MISSED") if version == "after" else ""
            rows.append([label, version, path, f"{common.median(medians[name]):.2f}", f"{ratio:.2f} x {base_name}",
                         f"{common.median(cpu_ms[name]):.2f}", f"{cpu_ratio:.2f} x {base_name}", f"<= {target:g}",
                         verdict])
    return rows, {"median_ms": medians, "server_cpu_ms_per_request": cpu_ms}


def paced_and_closed_rows(args: argparse.Namespace, label: str, apis: dict[str, tuple[int, str, list[str]]]
                          ) -> tuple[list[list[Any]], list[list[Any]], dict[str, Any]]:
    """Paced (each client once a second) and closed-loop rows; versions run back to back per row."""
    body = json.dumps(TINY_JOB).encode()
    paced_rows, closed_rows, data = [], [], {}
    endpoints = [("GET /v1/jobs/{id}", "GET", 50.0), ("GET /v1/jobs", "GET", 50.0), ("POST /v1/jobs", "POST", 100.0)]
    for name, method, target in endpoints:
        for version, (port, _, job_ids) in apis.items():
            paths = ([f"/v1/jobs/{job_id}" for job_id in job_ids] if "{id}" in name else ["/v1/jobs"])
            result = asyncio.run(load(port, method, paths, body if method == "POST" else b"", args.clients,
                                      args.seconds, args.think_ms / 1000, args.warmup, together=args.together))
            result["load_avg_1m"] = os.getloadavg()[0]
            bad = sum(n for status, n in result["statuses"].items() if status not in {200, 201}) + result["errors"]
            verdict = ("met" if result["p99_ms"] <= target and bad == 0 else "MISSED") if version == "after" else ""
            paced_rows.append([label, name, version, f"{result['throughput_rps']:.0f}", f"{result['p50_ms']:.1f}",
                               f"{result['p99_ms']:.1f}", f"<= {target:g}", verdict, bad,
                               f"{result['load_avg_1m']:.1f}"])
            data[f"paced | {label} | {name} | {version}"] = result
            common.log.info("%s %s %s paced: %s", label, name, version,
                            {k: result[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")})
    rates: dict[str, float] = {}
    for version, (port, _, job_ids) in apis.items():
        result = asyncio.run(load(port, "GET", [f"/v1/jobs/{job_id}" for job_id in job_ids], b"", args.clients,
                                  args.closed_seconds, 0.0, args.warmup))
        result["load_avg_1m"] = os.getloadavg()[0]
        rates[version] = result["throughput_rps"]
        data[f"closed | {label} | {version}"] = result
        bad = sum(n for status, n in result["statuses"].items() if status != 200) + result["errors"]
        closed_rows.append([label, version, f"{result['throughput_rps']:.0f}", f"{result['p50_ms']:.1f}",
                            f"{result['p99_ms']:.1f}", bad, f"{result['load_avg_1m']:.1f}"])
    before = next(iter(rates.values()))
    gain = rates["after"] / before if before else float("nan")
    closed_rows[-1] += [f"{gain:.1f}x", ">= 5x", "met" if gain >= 5 else "MISSED"]
    closed_rows[0] += ["1.0x", "", ""]
    return paced_rows, closed_rows, data


def start_api(running: Stack, seed_jobs: int, processes: int = 1) -> list[str]:
    subprocess.run([DISTILL, "migrate"], env=running.env, check=True, cwd=running.code, capture_output=True)
    extra = ["--workers", str(processes)] if processes > 1 else []
    running.start("api", "api", "--host", HOST, "--port", str(running.port), *extra)
    wait_healthy(running.base)
    return [http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)["id"] for _ in range(seed_jobs)]


def part_load(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    from tests.services import free_port

    one_rows, paced_rows, closed_rows, data = [], [], [], {}
    backends = ["sqlite", "postgresql"] if not args.sqlite_only else ["sqlite"]
    under_test = versions(args)
    floor_port = free_port()
    with servers("postgresql" in backends) as (postgres, redis), stack("floor", None, None) as floor:
        floor_process = floor.run_command("floor", [sys.executable, "-m", "uvicorn", "--app-dir", str(common.BENCH_DIR),
                                    "floor_app:app", "--host", HOST, "--port", str(floor_port),
                                    "--log-level", "warning"])
        wait_healthy(f"http://{HOST}:{floor_port}")
        for backend in backends:
            with contextlib.ExitStack() as stacks:
                apis: dict[str, tuple[int, str, list[str]]] = {}
                pids: dict[str, int] = {}
                for version in under_test:
                    label, db_url, broker_url = backend_urls(backend, postgres, redis)
                    running = stacks.enter_context(stack(f"load-{backend}-{common.slug(version.label)}", db_url,
                                                         broker_url, code=version.code))
                    job_ids = start_api(running, args.seed_jobs)
                    apis[version.label.split(" ")[0]] = (running.port, job_ids[0], job_ids)
                    pids[version.label.split(" ")[0]] = running.processes[-1].pid
                rows, medians = one_client_rows(args, label, (floor_port, floor_process.pid),
                                                {name: (port, pids[name], job) for name, (port, job, _) in apis.items()})
                one_rows += rows
                data[f"one client | {label}"] = medians
                paced, closed, raw = paced_and_closed_rows(args, label, apis)
                paced_rows += paced
                closed_rows += closed
                data.update(raw)
    before = under_test[0].label
    tables = [
        (f"One client, sequential keep-alive GETs: median ms of {args.one_client_requests} requests, "
         f"{args.one_client_rounds} interleaved rounds; ratio = median of per-round ratios; "
         f"'before' is {before}, 'after' this tree; 50 jobs in the table",
         ["backend", "server", "request", "median ms", "ratio (latency)", "server CPU ms/req", "ratio (CPU)",
          "target", "verdict (latency)"], one_rows),
        (f"Paced: {args.clients} clients, each one request then {args.think_ms:g} ms pause ({paced_start(args)}), "
         f"{args.seconds:g} s per row after {args.warmup:g} s warm-up; one API process; before and after back to "
         "back per row",
         ["backend", "endpoint", "code", "req/s", "p50 ms", "p99 ms", "p99 target", "verdict", "non-2xx/errors",
          "load 1m"], paced_rows),
        (f"Closed loop: {args.clients} clients sending GET /v1/jobs/{{id}} back to back for {args.closed_seconds:g} s; "
         "one API process",
         ["backend", "code", "req/s", "p50 ms", "p99 ms", "non-2xx/errors", "load 1m", "x before", "target",
          "verdict"], closed_rows),
    ]
    return tables, data


def paced_start(args: argparse.Namespace) -> str:
    return "all clients start together: a burst each second" if args.together else "clients start spread over the pause"


# --- part 1c: conditional GETs, the summary view and 2 API processes (this tree only) ---------------------


def etags(base: str, paths: list[str]) -> dict[str, str]:
    """Each path's current ETag, as an If-None-Match header line for the load client."""
    found = {}
    for path in paths:
        with urllib.request.urlopen(f"{base}{path}", timeout=30) as response:
            found[path] = f"If-None-Match: {response.headers['ETag']}\r\n"
    return found


def polls_rows(args: argparse.Namespace, label: str, processes: int, port: int, base: str, job_ids: list[str],
               reference: dict[str, float]) -> list[list[Any]]:
    """Closed-loop and paced rows of one API (`processes` processes): plain, conditional and summary polls."""
    jobs = [f"/v1/jobs/{job_id}" for job_id in job_ids]
    summaries = [f"{path}?view=summary" for path in jobs]
    lists = ["/v1/jobs?limit=20"]
    cases = [("GET /v1/jobs/{id}", jobs, None), ("GET /v1/jobs/{id} + If-None-Match (304)", jobs, etags(base, jobs)),
             ("GET /v1/jobs/{id}?view=summary", summaries, None),
             ("GET /v1/jobs?limit=20 + If-None-Match (304)", lists, etags(base, lists))]
    if processes > 1:
        cases = cases[:2]
    rows = []
    for name, paths, headers in cases:
        for mode, think_s, seconds, target in (("closed loop", 0.0, args.closed_seconds, None),
                                               ("paced 1/s", args.think_ms / 1000, args.seconds, 50.0)):
            if mode == "paced 1/s" and headers is None and processes == 1:
                continue  # the load part has these rows (plain and summary polls are alike)
            result = asyncio.run(load(port, "GET", paths, b"", args.clients, seconds, think_s, args.warmup,
                                      headers, together=args.together))
            result["load_avg_1m"] = os.getloadavg()[0]
            expected = 304 if headers else 200
            bad = sum(n for status, n in result["statuses"].items() if status != expected) + result["errors"]
            key = f"{label} | {processes} | {name} | {mode}"
            if processes == 1 and mode == "closed loop" and headers is None and "summary" not in name:
                reference[label] = result["throughput_rps"]
            gain = result["throughput_rps"] / reference[label] if mode == "closed loop" and reference.get(label) else None
            verdict = ("met" if result["p99_ms"] <= target and bad == 0 else "MISSED") if target else ""
            rows.append([label, processes, name, mode, f"{result['throughput_rps']:.0f}",
                         f"{gain:.2f}x" if gain else "", f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}",
                         f"<= {target:g}" if target else "", verdict, bad, f"{result['load_avg_1m']:.1f}"])
            common.log.info("%s: %s", key, {k: result[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")})
    return rows


def part_polls(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    """This tree only: conditional GETs (304), the summary view, and `distill api --workers 2`."""
    rows: list[list[Any]] = []
    reference: dict[str, float] = {}
    backends = ["sqlite", "postgresql"] if not args.sqlite_only else ["sqlite"]
    with servers("postgresql" in backends) as (postgres, redis):
        for backend in backends:
            for processes in (1, 2):
                label, db_url, broker_url = backend_urls(backend, postgres, redis)
                with stack(f"polls-{backend}-{processes}", db_url, broker_url) as running:
                    job_ids = start_api(running, args.seed_jobs, processes)
                    rows += polls_rows(args, label, processes, running.port, running.base, job_ids, reference)
    caption = (f"Polls on this tree: {args.clients} clients, closed loop ({args.closed_seconds:g} s) or paced "
               f"(one request then {args.think_ms:g} ms pause, {paced_start(args)}, {args.seconds:g} s), after "
               f"{args.warmup:g} s warm-up; 'x 1 process' = requests/s over the plain GET job row of one API process "
               "in this run")
    headers = ["backend", "API processes", "request", "load", "req/s", "x 1 process", "p50 ms", "p99 ms",
               "p99 target", "verdict", "unexpected status/errors", "load 1m"]
    return [(caption, headers, rows)], {"rows": rows}


# --- part 1b: the API while a job trains (distill serve) -------------------------------------------------

TRAINING_JOB: dict[str, Any] = {
    "name": "bench-training",
    "dataset": {"name": "digits", "image_size": 32},
    "teacher": {"arch": "resnet20", "epochs": 40},
    "student": {"arch": "resnet8"},
    "method": "e2kd",
    "training": {"epochs": 40, "batch_size": 64},
    "report": {"heatmaps": 0, "latency_runs": 1},
}


def part_training(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    """Paced GET /v1/jobs/{id} on a job that is training in the same `distill serve`, before and after."""
    rows, data = [], {}
    backends = ["sqlite", "postgresql"] if not args.sqlite_only else ["sqlite"]
    with servers("postgresql" in backends) as (postgres, redis):
        for backend in backends:
            for version in versions(args):
                label, db_url, broker_url = backend_urls(backend, postgres, redis)
                name = version.label.split(" ")[0]
                with stack(f"training-{backend}-{name}", db_url, broker_url, code=version.code) as running:
                    running.start("serve", "serve", "--host", HOST, "--port", str(running.port), "--workers", "1")
                    wait_healthy(running.base)
                    job_id = http_json("POST", f"{running.base}/v1/jobs", TRAINING_JOB)["id"]
                    job, _ = wait_for_job(running.base, job_id, {"running"}, 300, 0.2)
                    deadline = time.monotonic() + 120
                    while http_json("GET", f"{running.base}/v1/jobs/{job_id}")["stage"] in (None, "preparing_data"):
                        if time.monotonic() > deadline:
                            raise SystemExit("the training job did not start training")
                        time.sleep(0.5)
                    result = asyncio.run(load(running.port, "GET", [f"/v1/jobs/{job_id}"], b"", args.clients,
                                              args.seconds, args.think_ms / 1000, args.warmup,
                                              together=args.together))
                    after = http_json("GET", f"{running.base}/v1/jobs/{job_id}")
                    if after["status"] != "running":
                        raise SystemExit(f"the job stopped training during the window: {after['status']}")
                    result["load_avg_1m"] = os.getloadavg()[0]
                    result["stage_at_end"], result["progress_at_end"] = after["stage"], after["progress"]
                    data[f"{label} | {name}"] = result
                    bad = sum(n for status, n in result["statuses"].items() if status != 200) + result["errors"]
                    verdict = ("met" if result["p99_ms"] <= 100 and bad == 0 else "MISSED") if name == "after" else ""
                    rows.append([label, name, after["stage"], f"{result['throughput_rps']:.0f}",
                                 f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}", "<= 100", verdict, bad,
                                 f"{result['load_avg_1m']:.1f}"])
                    common.log.info("%s %s while training: %s", label, name,
                                    {k: result[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")})
    caption = (f"Paced GET /v1/jobs/{{id}} ({args.clients} clients, once a second, {paced_start(args)}, "
               f"{args.seconds:g} s) on a job "
               "training in the same `distill serve --workers 1` (digits, resnet20 -> resnet8 e2kd)")
    headers = ["backend", "code", "stage", "req/s", "p50 ms", "p99 ms", "p99 target", "verdict", "non-2xx/errors",
               "load 1m"]
    return [(caption, headers, rows)], data


# --- part 2: queue latency -------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_for_job(base: str, job_id: str, statuses: set[str], timeout_s: float, interval_s: float = 0.01
                 ) -> tuple[dict[str, Any], float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = http_json("GET", f"{base}/v1/jobs/{job_id}")
        if job["status"] in statuses:
            return job, time.perf_counter()
        if job["status"] in {"failed", "cancelled"}:
            raise SystemExit(f"job {job_id} ended {job['status']}: {job.get('error')}")
        time.sleep(interval_s)
    raise SystemExit(f"job {job_id} did not reach {statuses} in {timeout_s:.0f} s")


def part_queue(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    rows, data = [], {}
    with servers(True) as (postgres, redis):
        configurations = [
            ("embedded: SQLite + filesystem transport", None, None),
            ("SQLite + Redis", None, redis_url(redis)),
            ("PostgreSQL + Redis", postgres.url(postgres.create_database(prefix="bench")), redis_url(redis)),
        ]
        for label, db_url, broker_url in configurations:
            with stack(f"queue-{common.slug(label)}", db_url, broker_url,
                       {"DISTILL_TORCH_THREADS": "1"}) as running:
                running.start("serve", "serve", "--host", HOST, "--port", str(running.port), "--workers", "1")
                wait_healthy(running.base)
                # one untimed job first: the worker process imports torch and connects on its first job
                first = http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)["id"]
                wait_for_job(running.base, first, {"succeeded"}, 300)
                server_s, client_s = [], []
                for _ in range(args.queue_jobs):
                    time.sleep(args.queue_idle_s)  # the worker is idle and waiting, as a fresh submission finds it
                    posted = time.perf_counter()
                    job = http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)
                    running_job, seen = wait_for_job(running.base, job["id"], {"running", "succeeded"}, 120)
                    client_s.append(seen - posted)
                    server_s.append(parse_time(running_job["started_at"]) - parse_time(running_job["created_at"]))
                    wait_for_job(running.base, job["id"], {"succeeded"}, 300, 0.05)
                rows.append([label, args.queue_jobs, f"{common.median(server_s):.3f}", f"{max(server_s):.3f}",
                             f"{common.median(client_s):.3f}", "< 1" if "Redis" in label else "",
                             ("met" if common.median(server_s) < 1.0 else "MISSED") if "Redis" in label else ""])
                data[label] = {"server_seconds": server_s, "client_seconds": client_s}
                common.log.info("%s: queue latency median %.3f s (server), %.3f s (client)", label,
                                common.median(server_s), common.median(client_s))
    caption = ("Queue latency, POST to `running`, one idle worker (`distill serve --workers 1`); server = started_at - "
               "created_at of the job row, client = until a 10 ms poll saw it running")
    headers = ["transport", "jobs", "median s (server)", "max s (server)", "median s (client)", "target", "verdict"]
    return [(caption, headers, rows)], data


# --- part 3: scale-out -----------------------------------------------------------------------------------


def part_scale(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    walls: dict[int, list[float]] = {1: [], 2: []}
    job_seconds: dict[int, list[float]] = {1: [], 2: []}
    spec = scale_job(args.scale_epochs)
    with servers(True) as (postgres, redis):
        for repeat in range(args.scale_repeats):
            for workers in (1, 2):  # side by side, alternating, on fresh stacks
                db_url = postgres.url(postgres.create_database(prefix="bench"))
                threads = {"DISTILL_TORCH_THREADS": "1"}
                with stack(f"scale-{workers}w-{repeat}", db_url, redis_url(redis), threads) as running:
                    subprocess.run([DISTILL, "migrate"], env=running.env, check=True, cwd=common.REPO_ROOT,
                                   capture_output=True)
                    running.start("api", "api", "--host", HOST, "--port", str(running.port))
                    running.start("worker", "worker", "--concurrency", str(workers))
                    wait_healthy(running.base)
                    warm = http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)["id"]  # workers import torch
                    wait_for_job(running.base, warm, {"succeeded"}, 300, 0.1)
                    if workers == 2:  # make sure the second process has warmed up too
                        warm_two = [http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)["id"] for _ in range(2)]
                        for job_id in warm_two:
                            wait_for_job(running.base, job_id, {"succeeded"}, 300, 0.1)
                    started = time.perf_counter()
                    ids = [http_json("POST", f"{running.base}/v1/jobs", spec)["id"] for _ in range(4)]
                    finished = [wait_for_job(running.base, job_id, {"succeeded"}, 3600, 0.2)[0] for job_id in ids]
                    walls[workers].append(max(parse_time(j["finished_at"]) for j in finished)
                                          - min(parse_time(j["created_at"]) for j in finished))
                    job_seconds[workers] += [parse_time(j["finished_at"]) - parse_time(j["started_at"])
                                             for j in finished]
                    common.log.info("scale-out %d worker(s): %.1f s wall (client %.1f s)", workers,
                                    walls[workers][-1], time.perf_counter() - started)
    ratios = [two / one for one, two in zip(walls[1], walls[2])]
    ratio = common.median(ratios)
    rows = [
        ["1 worker", f"{common.median(walls[1]):.1f}", f"{common.median(job_seconds[1]):.1f}", "1.00", "", ""],
        ["2 workers", f"{common.median(walls[2]):.1f}", f"{common.median(job_seconds[2]):.1f}", f"{ratio:.2f}",
         "<= 0.6", "met" if ratio <= 0.6 else "MISSED"],
    ]
    caption = (f"Scale-out: 4 equal jobs (digits, resnet8 -> resnet8 e2kd, {args.scale_epochs} teacher + "
               f"{args.scale_epochs} student epochs), PostgreSQL + Redis, DISTILL_TORCH_THREADS=1; "
               f"median of {args.scale_repeats} alternating repeat(s)")
    headers = ["workers", "wall s (first POST to last success)", "s per job", "x 1 worker", "target", "verdict"]
    return [(caption, headers, rows)], {"wall_seconds": walls, "job_seconds": job_seconds, "ratios": ratios}


# --- part 4: a sweep over workers ------------------------------------------------------------------------


def sweep_body(epochs: int, children: int) -> dict[str, Any]:
    return {"name": "bench-sweep", "base": scale_job(epochs), "grid": {"training.seed": list(range(children))},
            "rank_by": "student_accuracy"}


def wait_for_sweep(base: str, sweep_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sweep = http_json("GET", f"{base}/v1/sweeps/{sweep_id}")
        if sweep["status"] in {"succeeded", "failed", "cancelled"}:
            if sweep["status"] != "succeeded":
                raise SystemExit(f"sweep {sweep_id} ended {sweep['status']}: {sweep['counts']}")
            return sweep
        time.sleep(0.5)
    raise SystemExit(f"sweep {sweep_id} did not finish in {timeout_s:.0f} s")


def part_sweep(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    walls: dict[int, list[float]] = {1: [], 2: []}
    with servers(True) as (postgres, redis):
        for repeat in range(args.scale_repeats):
            for workers in (1, 2):
                db_url = postgres.url(postgres.create_database(prefix="bench"))
                with stack(f"sweep-{workers}w-{repeat}", db_url, redis_url(redis),
                           {"DISTILL_TORCH_THREADS": "1"}) as running:
                    subprocess.run([DISTILL, "migrate"], env=running.env, check=True, cwd=common.REPO_ROOT,
                                   capture_output=True)
                    running.start("api", "api", "--host", HOST, "--port", str(running.port))
                    running.start("worker", "worker", "--concurrency", str(workers))
                    wait_healthy(running.base)
                    warm = [http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)["id"] for _ in range(workers)]
                    for job_id in warm:  # every worker process has imported torch
                        wait_for_job(running.base, job_id, {"succeeded"}, 300, 0.1)
                    sweep = http_json("POST", f"{running.base}/v1/sweeps", sweep_body(args.scale_epochs, 8))
                    done = wait_for_sweep(running.base, sweep["id"], 7200)
                    jobs = [http_json("GET", f"{running.base}{job['url']}")
                            for job in done["teacher_jobs"] + done["jobs"]]
                    walls[workers].append(max(parse_time(j["finished_at"]) for j in jobs)
                                          - min(parse_time(j["created_at"]) for j in jobs))
                    common.log.info("sweep of 8 on %d worker(s): %.1f s", workers, walls[workers][-1])
    ratios = [two / one for one, two in zip(walls[1], walls[2])]
    rows = [["1 worker", f"{common.median(walls[1]):.1f}", "1.00"],
            ["2 workers", f"{common.median(walls[2]):.1f}", f"{common.median(ratios):.2f}"]]
    caption = (f"Sweep: 8 equal children (grid over training.seed; digits, resnet8 -> resnet8 e2kd, "
               f"{args.scale_epochs} epoch(s)) plus the one shared teacher job, PostgreSQL + Redis, "
               f"DISTILL_TORCH_THREADS=1; median of {args.scale_repeats} alternating repeat(s)")
    return [(caption, ["workers", "wall s (POST to last child)", "x 1 worker"], rows)], \
        {"wall_seconds": walls, "ratios": ratios}


# --- part 5: local vs S3 storage -------------------------------------------------------------------------


def part_storage(args: argparse.Namespace) -> tuple[list[tuple[str, list[str], list[list[Any]]]], dict[str, Any]]:
    from tests.services import s3_server

    seconds: dict[str, list[float]] = {"local": [], "s3": []}
    with s3_server() as s3:
        for repeat in range(args.storage_repeats):
            for backend in ("local", "s3"):
                extra = {"DISTILL_TORCH_THREADS": "1"}
                if backend == "s3":
                    extra.update(s3.environment(), DISTILL_STORAGE_URL=f"s3://{s3.create_bucket()}/bench")
                with stack(f"storage-{backend}-{repeat}", None, None, extra) as running:
                    running.start("serve", "serve", "--host", HOST, "--port", str(running.port), "--workers", "1")
                    wait_healthy(running.base)
                    warm = http_json("POST", f"{running.base}/v1/jobs", TINY_JOB)["id"]
                    wait_for_job(running.base, warm, {"succeeded"}, 300, 0.1)
                    for _ in range(args.storage_jobs):
                        job_id = http_json("POST", f"{running.base}/v1/jobs", STORAGE_JOB)["id"]
                        job, _ = wait_for_job(running.base, job_id, {"succeeded"}, 600, 0.05)
                        seconds[backend].append(parse_time(job["finished_at"]) - parse_time(job["started_at"]))
                common.log.info("storage %s: median %.2f s per job", backend, common.median(seconds[backend]))
    local, remote = common.median(seconds["local"]), common.median(seconds["s3"])
    rows = [["local folder (DISTILL_HOME)", len(seconds["local"]), f"{local:.2f}", ""],
            ["S3 (moto_server, loopback)", len(seconds["s3"]), f"{remote:.2f}", f"{remote - local:+.2f}"]]
    caption = ("Storage overhead per job: the same job (digits, cnn -> cnn kd, 2 + 2 epochs, 8 heatmaps), "
               "`distill serve --workers 1`, started_at to finished_at; S3 adds the checkpoint pushes at every "
               f"epoch end and the artifact upload; {args.storage_repeats} alternating repeat(s)")
    return [(caption, ["storage", "jobs", "median s per job", "overhead s"], rows)], {"seconds": seconds}


STORAGE_JOB: dict[str, Any] = {
    **TINY_JOB, "name": "bench-storage", "teacher": {"arch": "cnn", "epochs": 2},
    "training": {"epochs": 2, "batch_size": 128}, "report": {"heatmaps": 8, "latency_runs": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 5 clients x 3 s, 2 queue jobs, tiny jobs")
    parser.add_argument("--parts", nargs="+", default=["load", "polls", "training", "queue", "scale", "sweep",
                                                       "storage"],
                        choices=["load", "polls", "training", "queue", "scale", "sweep", "storage"])
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="the 'before' commit of the load/training parts")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per paced row")
    parser.add_argument("--closed-seconds", type=float, default=15.0, help="measured seconds per closed-loop row")
    parser.add_argument("--one-client-requests", type=int, default=200)
    parser.add_argument("--one-client-rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--think-ms", type=float, default=1000.0, help="pause between a paced client's requests")
    parser.add_argument("--together", action="store_true",
                        help="paced clients all start at once (a burst of --clients requests each second) instead "
                             "of spread over the pause")
    parser.add_argument("--seed-jobs", type=int, default=50, help="jobs created before the load rows")
    parser.add_argument("--sqlite-only", action="store_true", help="load/training parts without PostgreSQL")
    parser.add_argument("--queue-jobs", type=int, default=10)
    parser.add_argument("--queue-idle-s", type=float, default=2.0, help="idle time before each timed submission")
    parser.add_argument("--scale-epochs", type=int, default=4)
    parser.add_argument("--scale-repeats", type=int, default=1, help="repeats of the scale and sweep parts")
    parser.add_argument("--storage-jobs", type=int, default=3, help="timed jobs per storage backend and repeat")
    parser.add_argument("--storage-repeats", type=int, default=2)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.closed_seconds, args.warmup, args.seed_jobs = 5, 3.0, 3.0, 1.0, 5
        args.one_client_requests, args.one_client_rounds = 50, 2
        args.queue_jobs, args.queue_idle_s, args.scale_epochs = 2, 0.5, 1
        args.storage_jobs, args.storage_repeats = 1, 1
    common.setup_logging(args.verbose)
    if not Path(DISTILL).exists():
        raise SystemExit(f"{DISTILL} not found: install the project (pip install -e .) into this environment")

    parts = {"load": part_load, "polls": part_polls, "training": part_training, "queue": part_queue, "scale": part_scale,
             "sweep": part_sweep, "storage": part_storage}
    tables, data = [], {}
    for part in args.parts:
        part_tables, part_data = parts[part](args)
        tables += part_tables
        data[part] = part_data
    settings = {
        "parts": args.parts, "baseline": args.baseline, "clients": args.clients, "seconds_per_row": args.seconds,
        "closed_seconds": args.closed_seconds, "think_ms": args.think_ms, "paced_start": paced_start(args),
        "queue_jobs": args.queue_jobs, "scale_epochs": args.scale_epochs, "scale_repeats": args.scale_repeats,
        "storage_jobs": args.storage_jobs, "storage_repeats": args.storage_repeats,
    }
    notes = [
        "The load client runs on the same 2 cores as the server (loopback), so throughput is a lower bound.",
        "Saturation rows: each client sends as soon as its previous answer arrives, so latency = clients / throughput; "
        "paced rows show the latency at a polling-like load.",
    ]
    notes += [f"Shutdown problem seen: {text}" for text in ORPHANS]
    everything = ["load", "polls", "training", "queue", "scale", "sweep", "storage"]
    suffix = "_quick" if args.quick else ("" if args.parts == everything else "_" + "_".join(args.parts))
    common.write_results("service_speed" + suffix, "Service speed and scale (loopback)", settings, tables, data, notes)


if __name__ == "__main__":
    main()
