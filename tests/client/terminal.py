"""Running the `distill` CLI as a person would: a plain subprocess, or one attached to a pseudo-terminal
(so tqdm draws its live bar exactly as on a screen) whose output the test can read as it appears."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass

from tests.e2e.conftest import DISTILL, clean_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# A shell gives the program in the foreground of a terminal the default Ctrl-C behaviour. A test run started
# in the background (`make test &`) inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt
# handler at all; so the CLI is started through a one-line trampoline that restores the default and execs it.
AS_IN_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "os.execv(sys.argv[1], sys.argv[1:])")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_env(url: str, **extra: str) -> dict[str, str]:
    return clean_env(DISTILL_URL=url, **extra)


def run_cli(*args: str, url: str, timeout_s: float = 120, **extra_env: str) -> Result:
    done = subprocess.run([DISTILL, *args], env=cli_env(url, **extra_env), capture_output=True, text=True,
                          timeout=timeout_s)
    return Result(done.returncode, done.stdout, done.stderr)


class TerminalRun:
    """`distill ...` with stdout and stderr on a pty of `columns` x 24; output collected by a reader thread."""

    def __init__(self, *args: str, url: str, columns: int = 110) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self._master = master
        self.process = subprocess.Popen([sys.executable, "-c", AS_IN_A_TERMINAL, DISTILL, *args],
                                        env={**cli_env(url), "TERM": "xterm"},
                                        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def raw(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    @property
    def screen_text(self) -> str:
        """The output without escape codes, every carriage-return redraw as its own line."""
        return ANSI.sub("", self.raw).replace("\r\n", "\n").replace("\r", "\n")

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen_text)
            if match:
                return match
            if self.process.poll() is not None:
                time.sleep(0.2)
                match = re.search(pattern, self.screen_text)
                if match:
                    return match
                raise AssertionError(f"exited ({self.process.returncode}) before {pattern!r}:\n{self.screen_text}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout_s:.0f}s:\n{self.screen_text}")

    def wait(self, timeout_s: float = 120) -> int:
        try:
            returncode = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running after {timeout_s:.0f}s:\n{self.screen_text}") from None
        self._reader.join(5)
        os.close(self._master)
        return returncode
