"""Real PostgreSQL and Redis servers for the test session, on free loopback ports.

Each is a context manager that starts a throwaway server in a temp folder and
removes it afterwards. A missing binary raises ServiceUnavailable with the
package to install: tests that need a server fail loudly rather than skip.
PostgreSQL refuses to run as root, so under root every server command runs as
the `postgres` system user, in a folder that user owns.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60


class ServiceUnavailable(RuntimeError):
    """A server the tests need cannot be started (binary missing, failed start)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------------------------


def find_postgres_bin() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3].split(".")[0])
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise ServiceUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; "
        "install them (e.g. apt-get install -y postgresql)"
    )


@dataclass
class PostgresServer:
    """A running cluster; superuser `postgres`, trust authentication on 127.0.0.1 only."""

    port: int
    base_dir: Path
    bin_dir: Path | None = None
    options: str = ""

    def _pg_ctl(self, *args: str) -> None:
        assert self.bin_dir is not None
        data_dir, log_file = self.base_dir / "data", self.base_dir / "server.log"
        _run([str(self.bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), *args], cwd=self.base_dir)

    def stop(self) -> None:
        """Stop the server at once (connections dropped), as a crash or a failover would."""
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start it again on the same port with the same options."""
        self._pg_ctl("-o", self.options, "-w", "-t", str(START_TIMEOUT_S), "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _connect(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, template: str | None = None, prefix: str = "test") -> str:
        """A new empty database (or a copy of `template`); returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with self._connect() as connection:
            connection.execute(sql)
        return name

    def drop_database(self, name: str) -> None:
        with self._connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_server_user(command: Sequence[str]) -> list[str]:
    """Run as `postgres` when we are root (the server refuses root); unchanged otherwise."""
    if os.geteuid() != 0:
        return list(command)
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *command]
    import shlex

    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: Sequence[str], cwd: Path) -> None:
    result = subprocess.run(
        _as_server_user(command), cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise ServiceUnavailable(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_postgres_bin()
    base_dir = Path(tempfile.mkdtemp(prefix="distill-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError as error:
            shutil.rmtree(base_dir, ignore_errors=True)
            raise ServiceUnavailable("running as root needs the 'postgres' system user to start PostgreSQL") from error
        os.chown(base_dir, account.pw_uid, account.pw_gid)
    data_dir, log_file = base_dir / "data", base_dir / "server.log"
    started = False
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust",
              "-E", "UTF8", "--no-locale", "--no-sync"], cwd=base_dir)  # fmt: skip
        for _ in range(3):  # the free port may be taken between probing and binding: try another
            port = free_port()
            options = (
                f"-p {port} -k {base_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                _run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-o", options,
                      "-w", "-t", str(START_TIMEOUT_S), "start"], cwd=base_dir)  # fmt: skip
            except ServiceUnavailable:
                logger.warning("postgres did not start on port %d; retrying", port)
                continue
            started = True
            break
        if not started:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise ServiceUnavailable(f"PostgreSQL did not start; server log:\n{log}")
        logger.info("postgres test server on 127.0.0.1:%d", port)
        yield PostgresServer(port=port, base_dir=base_dir, bin_dir=bin_dir, options=options)
    finally:
        if started:
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]),
                cwd=base_dir, capture_output=True, timeout=START_TIMEOUT_S, check=False,
            )  # fmt: skip
        shutil.rmtree(base_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RestartableRedis:
    """A redis-server on a fixed port that a test can stop and start again (no persistence: a restart
    loses every queued message, as a crashed broker would)."""

    def __init__(self, work_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server not found on PATH; install it (e.g. apt-get install -y redis-server)")
        self.binary, self.work_dir, self.port = binary, work_dir, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        with open(self.work_dir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.work_dir), "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _redis_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _stop(process: subprocess.Popen, log: IO[bytes]) -> None:
    """Stop a test server politely, then for sure, and close its log."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server not found on PATH; install it (e.g. apt-get install -y redis-server)")
    work_dir = Path(tempfile.mkdtemp(prefix="distill-redis-"))
    try:
        for _ in range(3):
            port = free_port()
            log = open(work_dir / "server.log", "ab")  # noqa: SIM115 - closed after the process ends
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(work_dir), "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline and not _redis_ping(port):
                time.sleep(0.05)
            if process.poll() is None and _redis_ping(port):
                break
            process.kill()
            process.wait()
            log.close()
        else:
            text = (work_dir / "server.log").read_text(errors="replace")
            raise ServiceUnavailable(f"redis-server did not start; log:\n{text}")
        logger.info("redis test server on 127.0.0.1:%d", port)
        try:
            yield RedisServer(port=port)
        finally:
            _stop(process, log)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# S3-compatible object store (moto's standalone server)
# ---------------------------------------------------------------------------------------------------------------

S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION = "testing", "testing", "us-east-1"


@dataclass
class S3Server:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The usual AWS variables a process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION,
        )  # fmt: skip

    def create_bucket(self, prefix: str = "distill") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _http_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server (`moto_server`, from moto[server]) on a free loopback port."""
    binary = shutil.which("moto_server")
    if binary is None:
        raise ServiceUnavailable("moto_server not found on PATH; install it (pip install 'moto[server]')")
    work_dir = Path(tempfile.mkdtemp(prefix="distill-s3-"))
    port = free_port()
    log = open(work_dir / "server.log", "ab")  # noqa: SIM115 - closed after the process ends
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline and not _http_up(port):
            time.sleep(0.1)
        if process.poll() is not None or not _http_up(port):
            raise ServiceUnavailable(f"moto_server did not start; log:\n{(work_dir / 'server.log').read_text()}")
        logger.info("S3 test server on 127.0.0.1:%d", port)
        yield S3Server(port=port)
    finally:
        _stop(process, log)
        shutil.rmtree(work_dir, ignore_errors=True)
