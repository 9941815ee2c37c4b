"""A follower whose server goes away mid-stream (restarted) picks the same job up again and sees it end."""

from __future__ import annotations

import re

import pytest

from client import DistillClient
from tests.client.served import Served, tiny_demo_spec
from tests.client.terminal import TerminalRun

pytestmark = pytest.mark.slow


def test_logs_keeps_following_the_same_job_across_a_server_restart(served: Served) -> None:
    try:
        with DistillClient(served.url) as client:
            # Long enough to still be distilling when the stop reaches the worker: a job that finishes during the
            # stop (4 epochs take about a second) leaves the follower nothing to reconnect to.
            job = client.submit(tiny_demo_spec("restarted", epochs=24))
        follower = TerminalRun("logs", job.id, url=served.url)
        follower.wait_for(r"running: distilling", 120)

        assert served.stop() == 0, served.log()  # the worker hands the job back; the stream breaks
        follower.wait_for(r"connection lost \(.*\); reconnecting", 30)
        served.start()  # same port, same data folder: the job resumes from its checkpoint

        assert follower.wait(180) == 0, f"{follower.screen_text}\n{served.log()}"
        after = follower.screen_text.split("reconnecting", 1)[1]
        assert re.search(r"state\s+(queued|running: \w+)", after), after  # events again, after the outage
        assert re.search(rf"job {job.id} succeeded", after) and "student_accuracy" in after
        assert follower.screen_text.count("connection lost") == 1  # one notice per outage, not per retry
        with DistillClient(served.url) as client:
            final = client.get(job.id)
        assert final.status == "succeeded" and final.attempts >= 1
    finally:
        if served.process is not None and not served.process.alive():
            served.start()  # the next test of this folder shares the server
