"""Client verbs for sweeps: `sweep SWEEP.json [--wait]` (a bar over the children), `sweeps`, `sweep-cancel`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from tqdm import tqdm

from cli.connection import EXIT_DETACHED, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, EXIT_OK, add_verb
from cli.jobs import _read_spec
from cli.render import table
from client import DistillClient, Sweep

LEADERBOARD_COLUMNS = ("student_accuracy", "agreement", "explanation_cosine", "ece", "latency_ms")


def register(commands: argparse._SubParsersAction) -> None:
    sweep = add_verb(commands, "sweep", _sweep,
                     "start a sweep from SWEEP.json ({base, grid, rank_by}); one job per grid combination")
    sweep.add_argument("sweep", help="sweep JSON: the body of POST /v1/sweeps (or - for stdin)")
    sweep.add_argument("--wait", action="store_true",
                       help="show a bar over the children until all ended, then the leaderboard; "
                       "exit 0 only if every child succeeded")
    sweep.add_argument("--idempotency-key", default=None, help="resubmitting with the same key returns the same sweep")

    listing = add_verb(commands, "sweeps", _sweeps, "list sweeps, newest first")
    listing.add_argument("--limit", type=int, default=20, help="show at most this many (default 20)")

    cancel = add_verb(commands, "sweep-cancel", _cancel, "cancel every unfinished job of a sweep")
    cancel.add_argument("sweep", help="sweep id")


def _counts(sweep: Sweep) -> str:
    parts = [f"{count} {status}" for status, count in sorted(sweep.counts.items())]
    teachers = [job.status for job in sweep.teacher_jobs if job.status not in ("succeeded",)]
    if teachers:
        parts.append(f"teacher {teachers[0]}")
    return ", ".join(parts)


def follow_sweep(client: DistillClient, sweep_id: str, stream: TextIO = sys.stderr) -> Sweep:
    """A bar whose total is the number of children and whose count is how many ended."""
    sweep = client.get_sweep(sweep_id)
    bar = tqdm(total=sweep.children, file=stream, dynamic_ncols=True, unit="job", desc=sweep.status,
               bar_format="{desc:<9} {n_fmt}/{total_fmt} |{bar}| {postfix} [{elapsed}]")
    try:
        for sweep in client.watch_sweep(sweep_id):
            bar.n = sweep.done_children
            bar.set_description_str(sweep.status, refresh=False)
            bar.set_postfix_str(_counts(sweep), refresh=False)
            bar.refresh()
    finally:
        bar.close()
    return sweep


def _stat(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def leaderboard_table(sweep: Sweep) -> str:
    rows = [(str(row["rank"]), json.dumps(row["config"], sort_keys=True), f"{row['finished']}/{row['runs']}",
             *[_stat(row["metrics"].get(column)) for column in LEADERBOARD_COLUMNS]) for row in sweep.leaderboard]
    return table(("RANK", "CONFIG", "SEEDS", *(c.upper() for c in LEADERBOARD_COLUMNS)), rows)


def _sweep(args: argparse.Namespace, client: DistillClient) -> int:
    sweep = client.submit_sweep(_read_spec(args.sweep), idempotency_key=args.idempotency_key)
    if not args.wait:
        print(sweep.id)
        return EXIT_OK
    print(f"sweep {sweep.id}: {sweep.children} jobs" + (f" sharing {len(sweep.teacher_jobs)} teacher job(s)"
          if sweep.teacher_jobs else "") + " - Ctrl-C detaches, the sweep keeps running", file=sys.stderr)
    try:
        final = follow_sweep(client, sweep.id)
    except KeyboardInterrupt:
        print(f"\ndetached from sweep {sweep.id} (cancel: distill sweep-cancel {sweep.id})", file=sys.stderr)
        return EXIT_DETACHED
    print(f"sweep {final.id} {final.status} (ranked by {final.rank_by}, mean ± std over seeds)")
    print(leaderboard_table(final))
    if final.status == "succeeded":
        return EXIT_OK
    return EXIT_JOB_CANCELLED if final.status == "cancelled" else EXIT_JOB_FAILED


def _sweeps(args: argparse.Namespace, client: DistillClient) -> int:
    items, _ = client.sweeps_page(limit=min(max(args.limit, 1), 100))
    if not items:
        print("no sweeps")
        return EXIT_OK
    rows = [(item["id"], item["status"], str(item["children"]),
             ", ".join(f"{n} {s}" for s, n in sorted(item["counts"].items())), item["name"]) for item in items]
    print(table(("ID", "STATUS", "JOBS", "COUNTS", "NAME"), rows))
    return EXIT_OK


def _cancel(args: argparse.Namespace, client: DistillClient) -> int:
    sweep = client.cancel_sweep(args.sweep)
    print(f"sweep {sweep.id}: {sweep.status} ({_counts(sweep)})")
    return EXIT_OK
