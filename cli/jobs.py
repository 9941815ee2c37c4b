"""Client verbs for jobs: submit [--wait], jobs, show, cancel, logs, download."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from cli.connection import EXIT_ERROR, EXIT_OK, add_verb
from cli.render import job_summary, jobs_table, size
from cli.watch import follow_as_lines, follow_to_end, follow_with_bar
from client import ClientError, DistillClient

JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def register(commands: argparse._SubParsersAction) -> None:
    submit = add_verb(commands, "submit", _submit, "submit a job spec (JSON file, or - for stdin)")
    submit.add_argument("spec", help="job spec JSON: the body of POST /v1/jobs")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job with a live progress bar until it ends; exit 0 only if it succeeded")
    submit.add_argument("--idempotency-key", default=None,
                        help="resubmitting with the same key returns the same job (default: a fresh key)")

    listing = add_verb(commands, "jobs", _jobs, "list jobs, newest first")
    listing.add_argument("--status", choices=JOB_STATUSES, default=None, help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=20, help="show at most this many (default 20; 0 = all)")
    listing.add_argument("--json", action="store_true", help="print the jobs as JSON lines")

    show = add_verb(commands, "show", _show, "one job's state, progress, metrics, error and artifacts")
    show.add_argument("job", help="job id")
    show.add_argument("--json", action="store_true", help="print the job document as JSON")

    cancel = add_verb(commands, "cancel", _cancel, "cancel a job (a running one stops at its next step)")
    cancel.add_argument("job", help="job id")

    logs = add_verb(commands, "logs", _logs, "follow a job's events (one line each) until it ends")
    logs.add_argument("job", help="job id")

    download = add_verb(commands, "download", _download, "save a job's artifacts into a folder")
    download.add_argument("job", help="job id")
    download.add_argument("--out", required=True, type=Path, help="folder to write into (created if missing)")
    download.add_argument("--only", action="append", default=None, metavar="NAME",
                          help="only this artifact (e.g. student.onnx); repeatable")


def _read_spec(source: str) -> dict:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise ClientError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ClientError(f"{source} must hold a JSON object (a job spec)")
    return spec


def _submit(args: argparse.Namespace, client: DistillClient) -> int:
    job = client.submit(_read_spec(args.spec), idempotency_key=args.idempotency_key)
    if not args.wait:
        print(job.id)
        return EXIT_OK
    print(f"submitted {job.id} ({job.name}); following it - Ctrl-C detaches, the job keeps running",
          file=sys.stderr)
    return follow_to_end(follow_with_bar, client, job.id)


def _jobs(args: argparse.Namespace, client: DistillClient) -> int:
    jobs = list(client.list_jobs(args.status, page_size=min(max(args.limit, 1), 100), limit=args.limit or None))
    if args.json:
        for job in jobs:
            print(json.dumps(job.raw))
    elif jobs:
        print(jobs_table(jobs))
    else:
        print("no jobs" + (f" with status {args.status}" if args.status else ""))
    return EXIT_OK


def _show(args: argparse.Namespace, client: DistillClient) -> int:
    job = client.get(args.job)
    print(json.dumps(job.raw, indent=2) if args.json else job_summary(job))
    return EXIT_OK


def _cancel(args: argparse.Namespace, client: DistillClient) -> int:
    job = client.cancel(args.job)
    tail = " (it stops at its next training step)" if job.status == "cancelling" else ""
    print(f"job {job.id}: {job.status}{tail}")
    return EXIT_OK


def _logs(args: argparse.Namespace, client: DistillClient) -> int:
    return follow_to_end(follow_as_lines, client, args.job)


def _download(args: argparse.Namespace, client: DistillClient) -> int:
    job = client.get(args.job)
    names = args.only or [artifact.name for artifact in job.artifacts]
    if not job.artifacts and not args.only:
        print(f"job {job.id} has no artifacts yet (status {job.status})", file=sys.stderr)
        return EXIT_ERROR
    total = sum(artifact.size_bytes for artifact in job.artifacts if artifact.name in names)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stderr,
              disable=total < (1 << 20)) as bar:
        saved = client.download(job.id, args.out, only=args.only, on_bytes=bar.update)
    for path in saved:
        print(f"{path}  {size(path.stat().st_size)}")
    return EXIT_OK
