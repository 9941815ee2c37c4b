"""bench/gpu.py in its CPU form: the toy-size check runs the multi-device code path (1 vs 2 gloo ranks) end to end."""

from __future__ import annotations

import pytest

from bench.gpu import TOY, _rows, run_check


def test_the_gpu_check_runs_at_toy_size_on_the_cpu_and_fills_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_TORCH_THREADS", "1")
    monkeypatch.setenv("DISTILL_LOG_LEVEL", "WARNING")
    results = run_check(TOY, ["kd", "e2kd"], ["fp32"], [1, 2])
    rows = _rows(results)
    assert [(row[0], row[2]) for row in rows] == [("kd", 1), ("kd", 2), ("e2kd", 1), ("e2kd", 2)]
    assert all(row[3] > 0 and row[4] > 0 for row in rows)  # s/epoch, images/s measured
    assert {r["device"]["ranks"] for r in results} == {1, 2} and {r["device"]["type"] for r in results} == {"cpu"}
