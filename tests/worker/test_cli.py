"""The `distill` console script, run as a user runs it: a subprocess with its own environment."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from store.settings import Settings
from tests.worker.jobspecs import tiny_spec

DISTILL = str(Path(sys.executable).with_name("distill"))


def _env(**extra: str) -> dict[str, str]:
    names = {field.alias for field in Settings.model_fields.values() if field.alias}
    env = {key: value for key, value in os.environ.items() if key not in names}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _distill(*args: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DISTILL, *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def test_serve_refuses_a_public_address_without_api_keys(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = _distill("serve", "--host", "0.0.0.0", "--port", "8999", env=_env(DISTILL_HOME=str(home)))
    assert result.returncode == 2
    assert "DISTILL_API_KEYS" in result.stderr
    assert not (home / "distill.db").exists()  # refused before migrating or starting anything


def test_api_refuses_a_public_address_without_api_keys(tmp_path: Path) -> None:
    result = _distill("api", "--host", "0.0.0.0", env=_env(DISTILL_HOME=str(tmp_path)))
    assert result.returncode == 2
    assert "DISTILL_API_KEYS" in result.stderr


def test_migrate_creates_the_schema_in_distill_home(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "home"
    result = _distill("migrate", env=_env(DISTILL_HOME=str(home)))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(home / "distill.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "artifacts", "models", "datasets"} <= tables
    again = _distill("migrate", env=_env(DISTILL_HOME=str(home)))  # idempotent
    assert again.returncode == 0, again.stderr


def test_run_writes_the_artifacts_of_a_job_to_out(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec()))
    out = tmp_path / "out"
    result = _distill("run", str(spec_path), "--out", str(out), env=_env(DISTILL_HOME=str(tmp_path / "home")))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["student_accuracy"] <= 1.0
    assert (out / "student.safetensors").is_file()
    assert list((out / "heatmaps").glob("*.png"))


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = _distill("frobnicate", env=_env(DISTILL_HOME=str(tmp_path)))
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_run_honours_distill_torch_threads(tmp_path: Path) -> None:
    """The CLI applies DISTILL_TORCH_THREADS as a worker does (core.train.runtime), before it reads the spec."""
    result = _distill("run", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out"),
                      env=_env(DISTILL_TORCH_THREADS="1", OMP_NUM_THREADS="2"))
    assert result.returncode == 2
    assert "torch: 1 threads (DISTILL_TORCH_THREADS)" in result.stderr
    assert "cannot read spec" in result.stderr


def test_run_rejects_a_bad_distill_torch_threads_by_name(tmp_path: Path) -> None:
    result = _distill("run", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out"),
                      env=_env(DISTILL_TORCH_THREADS="two"))
    assert result.returncode == 2
    assert "DISTILL_TORCH_THREADS must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr
