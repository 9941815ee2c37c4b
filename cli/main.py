"""`distill`: the one console script, and the composition root (it alone may import every layer).

    distill run SPEC.json --out DIR     one job in this process, no server (cli.run)
    distill serve [--host] [--port] [--workers N] [--api-workers M]
                                        migrations + N workers + the API: the one command a newcomer runs
    distill api [--host] [--port] [--workers M]
                                        the API alone (production), in M processes
    distill worker [--concurrency N]    N worker processes alone (production)
    distill worker --gpus all|0,1,3     one worker process per GPU, each pinned to it (CUDA_VISIBLE_DEVICES)
    distill migrate                     alembic upgrade head

and the client verbs (cli.jobs, cli.uploads), which speak only HTTP through client/:
    distill submit SPEC.json [--wait] | jobs | show | cancel | logs | download | upload-model | upload-dataset
    distill sweep SWEEP.json [--wait] | sweeps | sweep-cancel

Settings come from the environment (store.settings); see the README.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from cli import jobs as job_verbs
from cli import sweeps as sweep_verbs
from cli import uploads as upload_verbs
from cli.connection import run_verb

if TYPE_CHECKING:
    from store.settings import Settings

log = logging.getLogger("distill")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
EMBEDDED_WORKER_NICENESS = 10  # `distill serve`: training yields the CPU to the API (0 = same priority)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Explanation-guided knowledge distillation service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # `run` is parsed by cli.run itself (spec, --out, --data): listed here for `distill --help` only.
    commands.add_parser("run", help="run one job spec in this process: run SPEC.json --out DIR [--data NAME=PATH]",
                        add_help=False)

    serve = commands.add_parser("serve", help="migrate, start workers and serve the API (embedded defaults)")
    _add_bind(serve)
    serve.add_argument("--workers", type=_positive, default=1, help="worker processes, one job each (default 1)")
    serve.add_argument("--api-workers", type=_positive, default=1, help="API processes (default 1)")
    serve.add_argument("--gpus", default=None, metavar="all|0,1,3",
                       help="one worker per listed GPU, each seeing only its GPU (replaces --workers)")

    api = commands.add_parser("api", help="serve the HTTP API only")
    _add_bind(api)
    api.add_argument("--workers", type=_positive, default=1, help="API processes (default 1)")

    worker = commands.add_parser("worker", help="run worker processes only")
    worker.add_argument("--concurrency", type=_positive, default=1, help="worker processes, one job each (default 1)")
    worker.add_argument("--gpus", default=None, metavar="all|0,1,3",
                        help="one worker per listed GPU, each seeing only its GPU (CUDA_VISIBLE_DEVICES)")

    commands.add_parser("migrate", help="upgrade the database schema to the latest revision")

    # Client verbs: one module per group, each registers its own subcommands.
    for verbs in (job_verbs, upload_verbs, sweep_verbs):
        verbs.register(commands)
    return parser


def _add_bind(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        from cli.run import main as run_main

        return run_main(argv[1:])
    args = _parser().parse_args(argv)
    if getattr(args, "client_handler", None) is not None:
        return run_verb(args)  # a client of some server: no server settings, no server imports
    from api.auth import InsecureBindError
    from store.settings import get_settings
    from worker.logsetup import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    handlers = {"serve": _serve, "api": _api, "worker": _worker, "migrate": _migrate}
    try:
        return handlers[args.command](args, settings)
    except InsecureBindError as exc:
        print(f"distill: {exc}", file=sys.stderr)
        return 2


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from store.db import upgrade_database

    settings.distill_home.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.db_url)
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from api.auth import check_bind_allowed
    from worker.gpus import gpu_child_envs
    from worker.supervisor import WorkerProcesses

    check_bind_allowed(args.host, settings)
    gpus = _gpus(args.gpus)
    if gpus == []:
        return 2
    _migrate(args, settings)
    workers = WorkerProcesses(len(gpus) if gpus else args.workers, _embedded_worker_env(settings, args.api_workers),
                              settings.log_level, niceness=EMBEDDED_WORKER_NICENESS,
                              child_envs=gpu_child_envs(gpus) if gpus else None)
    # uvicorn restores the SIGTERM handler it found and re-raises the signal after its own
    # shutdown; with Python's default handler that kills this process before `finally` stops
    # the workers (they run in their own session and would be orphaned). Exiting instead lets it run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    workers.start()
    try:
        log.info("serving on http://%s:%d with %d API process(es) and %d worker(s); data in %s",
                 args.host, args.port, args.api_workers, args.workers, settings.distill_home)
        _run_uvicorn(args.host, args.port, settings, args.api_workers)
    finally:
        workers.stop()
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from api.auth import check_bind_allowed

    check_bind_allowed(args.host, settings)
    _run_uvicorn(args.host, args.port, settings, args.workers)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.gpus import gpu_child_envs
    from worker.supervisor import WorkerProcesses

    gpus = _gpus(args.gpus)
    if gpus == []:
        return 2
    settings.distill_home.mkdir(parents=True, exist_ok=True)
    workers = WorkerProcesses(len(gpus) if gpus else args.concurrency, _child_env(settings), settings.log_level,
                              child_envs=gpu_child_envs(gpus) if gpus else None)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping workers", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workers.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        workers.stop()
    return 0


def _gpus(choice: str | None) -> list[str] | None:
    """The GPUs `--gpus` names (None without the flag); [] after printing why they cannot be used."""
    if choice is None:
        return None
    from worker.gpus import GpuChoiceError, cuda_device_count, parse_gpus

    try:
        gpus = parse_gpus(choice, cuda_device_count())
    except GpuChoiceError as exc:
        print(f"distill: {exc}", file=sys.stderr)
        return []
    log.info("one worker per GPU: %s", ", ".join(gpus))
    return gpus


def _run_uvicorn(host: str, port: int, settings: Settings, processes: int = 1) -> None:
    """Uvicorn in the foreground; it returns on Ctrl-C / SIGTERM after draining requests.

    One process serves the app built here. Several are uvicorn's worker processes, each
    importing `cli.asgi:api_process_app` with this environment (DISTILL_HOME pinned), and
    sharing their Prometheus metrics through a fresh multiprocess folder removed at exit.
    """
    import uvicorn

    if processes == 1:
        from api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, timeout_graceful_shutdown=5)
        return
    from api.metrics import MULTIPROC_ENV

    os.environ["DISTILL_HOME"] = str(settings.distill_home)
    with tempfile.TemporaryDirectory(prefix="distill-metrics-") as folder:
        os.environ[MULTIPROC_ENV] = folder  # before any API process imports prometheus_client
        uvicorn.run("cli.asgi:api_process_app", factory=True, workers=processes, host=host, port=port,
                    log_config=None, timeout_graceful_shutdown=5)


def _child_env(settings: Settings) -> dict[str, str]:
    """The workers see exactly this process's settings: DISTILL_HOME is pinned as an absolute path."""
    return {**os.environ, "DISTILL_HOME": str(settings.distill_home)}


def _embedded_worker_env(settings: Settings, api_processes: int) -> dict[str, str]:
    """`distill serve` shares the machine between training and the API: training must not starve the API.

    Unless DISTILL_TORCH_THREADS says otherwise, each worker's torch uses the cores the API
    processes leave (at least one) instead of all of them, and the workers run at a lower
    CPU priority (EMBEDDED_WORKER_NICENESS), so a request never waits behind a training step
    for a core.
    """
    env = _child_env(settings)
    if settings.torch_threads == 0:
        env["DISTILL_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) - api_processes))
    return env


if __name__ == "__main__":
    sys.exit(main())
