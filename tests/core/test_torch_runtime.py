"""The process-wide torch setup every training entry point calls (core.train.runtime)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.train.runtime import configure_torch, threads_setting


@pytest.mark.parametrize(("value", "threads"), [(None, 0), ("", 0), (" 3 ", 3), ("0", 0)])
def test_threads_setting_reads_distill_torch_threads(value: str | None, threads: int) -> None:
    environ = {} if value is None else {"DISTILL_TORCH_THREADS": value}
    assert threads_setting(environ) == threads


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_threads_setting_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="DISTILL_TORCH_THREADS"):
        threads_setting({"DISTILL_TORCH_THREADS": value})


def test_configure_torch_sets_the_threads_and_keeps_the_default_on_zero() -> None:
    previous = torch.get_num_threads()
    try:
        assert configure_torch(1).threads == 1 and torch.get_num_threads() == 1
        setup = configure_torch(0)
        assert setup.threads == 1 and not setup.threads_from_setting  # 0 leaves torch as it is
    finally:
        torch.set_num_threads(previous)


def test_after_configure_torch_the_first_optimizer_imports_nothing_more() -> None:
    """In a fresh process: the optimiser's lazy torch._dynamo import happens in configure_torch, not in the job."""
    script = (
        "import sys, torch\n"
        "from core.train.runtime import configure_torch\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "configure_torch()\n"
        "before = set(sys.modules)\n"
        "torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('torch._dynamo')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
