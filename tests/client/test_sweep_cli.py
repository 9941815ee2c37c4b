"""`distill sweep SWEEP.json --wait` against a real `distill serve`: a bar over the children, then the
leaderboard; `distill sweeps` lists it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from client import DistillClient
from tests.client.served import Served, tiny_demo_spec
from tests.client.terminal import TerminalRun, run_cli

pytestmark = pytest.mark.slow

# One bar redraw: "running   1/2 |█████     | 1 succeeded, 1 running [00:07]"
SWEEP_BAR = re.compile(r"(?P<status>queued|running|succeeded)\s+(?P<done>\d)/(?P<total>\d) \|")


def test_sweep_wait_shows_a_bar_over_children_and_the_leaderboard(served: Served, tmp_path: Path) -> None:
    body = {"base": tiny_demo_spec("cli-sweep", shots_per_class=5), "grid": {"training.seed": [0, 1]},
            "rank_by": "agreement"}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(body))

    run = TerminalRun("sweep", str(path), "--wait", url=served.url)
    returncode = run.wait(300)
    text = run.screen_text

    assert returncode == 0, text
    sweep_id = re.search(r"sweep (swp_\w+): 2 jobs sharing 1 teacher job", text).group(1)  # type: ignore[union-attr]
    bars = [match.groupdict() for match in SWEEP_BAR.finditer(text)]
    assert bars and {bar["total"] for bar in bars} == {"2"}, text
    assert bars[-1]["done"] == "2" and bars[-1]["status"] == "succeeded", bars
    assert re.search(r'^1\s+\{\}\s+2/2\s+0\.\d{4} ± 0\.\d{4}', text, re.M), text  # one row: seeds averaged
    assert "Traceback" not in text
    listing = run_cli("sweeps", url=served.url)
    assert listing.returncode == 0 and sweep_id in listing.stdout and "2 succeeded" in listing.stdout
    with DistillClient(served.url) as client:
        assert client.get_sweep(sweep_id).leaderboard[0]["seeds"] == [0, 1]
        assert client.leaderboard_csv(sweep_id).startswith("rank,config,seeds")
