"""The `distill` client verbs against a real `distill serve`, run as a person runs them (subprocess, pty)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client import DistillClient, Job
from core.models import build_model, save_weights
from tests.api.support import npz_bytes
from tests.client.served import Served, tiny_demo_spec
from tests.client.terminal import TerminalRun, run_cli
from tests.services import free_port

pytestmark = pytest.mark.slow

# One bar redraw: "distilling         62%|██████▏   | epoch 1/2  step 3/4  loss 0.4210 [00:07]"
BAR_LINE = re.compile(r"^(?P<stage>[a-z_]+)\s+(?P<percent>\d+)%\|[^|]*\| (?P<postfix>[^\[\n]*)\[", re.M)


def _spec_file(tmp_path: Path, **kwargs: object) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_demo_spec(**kwargs)))  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[DistillClient]:
    with DistillClient(served.url) as client:
        yield client


@pytest.fixture(scope="module")
def finished_job(client: DistillClient) -> Job:
    """A succeeded job submitted and awaited through the Python client."""
    job = client.submit(tiny_demo_spec("finished"), idempotency_key="finished-1")
    assert client.submit(tiny_demo_spec("finished"), idempotency_key="finished-1").id == job.id  # a replay
    final = client.wait(job.id)
    assert final.status == "succeeded", final
    return final


def test_submit_wait_draws_a_live_bar_and_ends_with_the_metrics(served: Served, tmp_path: Path) -> None:
    # A teacher stage of a few seconds: the stream shows every stage that lasts longer than its poll interval
    spec = _spec_file(tmp_path, epochs=2, teacher_epochs=5, shots_per_class=30)
    run = TerminalRun("submit", str(spec), "--wait", url=served.url)
    returncode = run.wait(180)
    text = run.screen_text

    assert returncode == 0, text
    job_id = re.search(r"submitted (job_\w+)", text).group(1)  # type: ignore[union-attr]
    bars = [match.groupdict() for match in BAR_LINE.finditer(text)]
    assert {"training_teacher", "distilling"} <= {bar["stage"] for bar in bars}, text
    assert any(re.match(r"epoch \d+/2  step \d+/\d+  loss \d+\.\d{4} $", bar["postfix"]) for bar in bars), text
    percents = [int(bar["percent"]) for bar in bars]
    assert percents[-1] == 100 and len(set(percents)) > 3, percents  # it moved, and it ended full
    assert re.search(r"\d\d:\d\d:\d\d running: distilling", text)  # stage changes are printed as lines
    assert re.search(r"student_accuracy\s+0\.\d{4}", text) and "explanation_cosine" in text
    assert "Traceback" not in text
    with DistillClient(served.url) as client:
        job = client.get(job_id)
    assert job.status == "succeeded" and job.progress is not None and job.progress.fraction == 1.0


def test_submit_wait_of_a_failing_job_exits_1_with_the_error_code_and_message(served: Served, tmp_path: Path) -> None:
    """A teacher.layer that the model lacks is found when the model is built: the job fails in the worker."""
    spec = tiny_demo_spec("fails")
    spec["teacher"]["layer"] = "no.such.layer"
    path = tmp_path / "failing.json"
    path.write_text(json.dumps(spec))
    run = TerminalRun("submit", str(path), "--wait", url=served.url)
    returncode = run.wait(120)
    text = run.screen_text

    assert "Traceback" not in text
    if "submitted job_" not in text:  # a server that checks the layer at submission refuses it up front
        assert returncode == 2 and "teacher.layer" in text, text
        return
    assert returncode == 1, text
    assert re.search(r"job job_\w+ failed: invalid_spec: .*no\.such\.layer.* \(in \w+\)", text), text


def test_jobs_show_download_and_logs_of_a_finished_job(served: Served, finished_job: Job, tmp_path: Path) -> None:
    listing = run_cli("jobs", url=served.url)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith(finished_job.id))
    assert re.search(r"succeeded\s+-\s+100%\s+e2kd\s+resnet8<-resnet20\s+0\.\d{3}\s+0\.\d{3}", row), row
    assert finished_job.id not in run_cli("jobs", "--status", "failed", url=served.url).stdout

    shown = run_cli("show", finished_job.id, url=served.url)
    assert shown.returncode == 0 and "status    succeeded" in shown.stdout
    assert re.search(r"student_accuracy\s+0\.\d{4}", shown.stdout) and "student.safetensors" in shown.stdout

    everything = run_cli("download", finished_job.id, "--out", str(tmp_path / "all"), url=served.url)
    assert everything.returncode == 0, everything.stderr
    names = sorted(a.name for a in finished_job.artifacts)
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*")
                  if p.is_file()) == names
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["student_accuracy"] == \
        finished_job.metrics["student_accuracy"]  # type: ignore[index]

    one = run_cli("download", finished_job.id, "--out", str(tmp_path / "one"), "--only", "metrics.json",
                  url=served.url)
    assert one.returncode == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["metrics.json"]

    logs = run_cli("logs", finished_job.id, url=served.url)
    assert logs.returncode == 0 and re.search(r"state\s+succeeded\s+100\.0%", logs.stdout), logs.stdout


def test_ctrl_c_during_wait_detaches_without_cancelling(served: Served, tmp_path: Path) -> None:
    # Long enough (tens of seconds) to be still running when the CLI has detached; cancelled below
    run = TerminalRun("submit", str(_spec_file(tmp_path, epochs=60, shots_per_class=50)), "--wait", url=served.url)
    job_id = run.wait_for(r"submitted (job_\w+)", 30).group(1)
    run.wait_for(r"running: (training_teacher|distilling)", 90)
    run.process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process

    assert run.wait(30) == 130
    assert re.search(rf"detached from job {job_id}; it keeps running", run.screen_text), run.screen_text
    assert "Traceback" not in run.screen_text
    with DistillClient(served.url) as client:
        assert client.get(job_id).status == "running"

    cancelled = run_cli("cancel", job_id, url=served.url)
    assert cancelled.returncode == 0 and re.search(r"cancell(ing|ed)", cancelled.stdout), cancelled
    logs = run_cli("logs", job_id, url=served.url)
    assert logs.returncode == 3, logs  # a cancelled job is not a success
    assert f"job {job_id} cancelled" in logs.stderr


def test_errors_show_the_servers_code_and_message_never_a_traceback(served: Served, finished_job: Job,
                                                                    tmp_path: Path) -> None:
    refused = run_cli("jobs", url=f"http://127.0.0.1:{free_port()}")
    assert refused.returncode == 2 and "connection_failed" in refused.stderr and "refused" in refused.stderr

    unknown = run_cli("show", "job_nope", url=served.url)
    assert unknown.returncode == 2 and "job_not_found: no job with id 'job_nope'" in unknown.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**tiny_demo_spec(), "student": {"arch": "resnet9"}}))
    invalid = run_cli("submit", str(bad), url=served.url)
    assert invalid.returncode == 2 and "validation_error" in invalid.stderr and "student.arch" in invalid.stderr

    finished = run_cli("cancel", finished_job.id, url=served.url)
    assert finished.returncode == 2 and "job_finished" in finished.stderr

    missing = run_cli("download", finished_job.id, "--out", str(tmp_path), "--only", "nope.bin", url=served.url)
    assert missing.returncode == 2 and "artifact_not_found" in missing.stderr
    for result in (refused, unknown, invalid, finished, missing):
        assert "Traceback" not in result.stderr + result.stdout


def test_uploads_stream_the_file_and_report_bytes(served: Served, client: DistillClient, tmp_path: Path) -> None:
    weights = tmp_path / "teacher.safetensors"
    save_weights(build_model("cnn", 10, 1), weights)
    uploaded = run_cli("upload-model", str(weights), "--arch", "cnn", "--num-classes", "10", "--in-channels", "1",
                       url=served.url)
    assert uploaded.returncode == 0, uploaded.stderr
    model_id = uploaded.stdout.strip()
    assert model_id in {model.id for model in client.models()}

    rng = np.random.default_rng(0)  # incompressible pixels: 9 MiB on the wire, over the bar's threshold
    arrays = tmp_path / "arrays.npz"
    arrays.write_bytes(npz_bytes(x=rng.integers(0, 255, (2400, 64, 64), dtype=np.uint8), y=np.arange(2400) % 3))
    run = TerminalRun("upload-dataset", str(arrays), url=served.url)
    assert run.wait(120) == 0, run.screen_text
    assert re.search(r"upload arrays\.npz: 100%\|.*9\.\d+M/9\.\d+M", run.screen_text), run.screen_text
    dataset_id = re.search(r"^(ds_\w+)$", run.screen_text, re.M).group(1)  # type: ignore[union-attr]
    assert {dataset.id: dataset.num_train for dataset in client.datasets()}[dataset_id] == 2400

    sent: list[int] = []
    again = client.upload_dataset(arrays, name="again", on_bytes=sent.append)
    assert again.name == "again" and sum(sent) == arrays.stat().st_size and len(sent) > 1


def test_list_iterates_every_page(client: DistillClient) -> None:
    ids = []
    for index in range(3):
        job = client.submit(tiny_demo_spec(f"paged-{index}"))
        client.cancel(job.id)
        ids.append(job.id)
    paged = [job.id for job in client.list_jobs(page_size=2)]
    assert len(paged) == len(set(paged)) and set(ids) <= set(paged)
    assert paged == [job.id for job in client.jobs_page(limit=100)[0]]
    cancelled = list(client.list_jobs(status="cancelled", page_size=1, limit=2))
    assert len(cancelled) == 2 and {job.status for job in cancelled} == {"cancelled"}


def test_upload_model_takes_a_pt2_program_without_arch(served: Served, client: DistillClient, tmp_path: Path) -> None:
    from tests.teacher_code import OptionAResNet, export_program

    program = export_program(OptionAResNet(num_classes=10, in_channels=1), tmp_path / "own.pt2", 1, 16)
    uploaded = run_cli("upload-model", str(program), url=served.url)
    assert uploaded.returncode == 0, uploaded.stderr
    model = next(model for model in client.models() if model.id == uploaded.stdout.strip())
    assert (model.arch, model.num_classes, model.in_channels) == ("exported", 10, 1)
