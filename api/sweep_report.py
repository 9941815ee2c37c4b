"""The sweep report: one self-contained HTML page (no scripts, no external assets) with the leaderboard
and the children, escaped throughout since names and grid values come from clients."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from api.sweep_schemas import SweepOut
from core.spec.sweep import LEADERBOARD_METRICS

_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td.l{text-align:left}
code{font-size:12px}"""


def _stat(stats: Any) -> str:
    if stats.mean is None:
        return "–"
    return f"{stats.mean:.4f} ± {stats.std:.4f}"


def _leaderboard(sweep: SweepOut) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in LEADERBOARD_METRICS)
    rows = []
    for row in sweep.leaderboard:
        cells = "".join(f"<td>{_stat(row.metrics[column])}</td>" for column in LEADERBOARD_METRICS)
        config = escape(json.dumps(row.config, sort_keys=True))
        seeds = escape(", ".join(str(seed) for seed in row.seeds))
        rows.append(f"<tr><td>{row.rank}</td><td class=l><code>{config}</code></td><td>{seeds}</td>"
                    f"<td>{row.finished}/{row.runs}</td>{cells}</tr>")
    return (f"<table><tr><th>rank</th><th>config</th><th>seeds</th><th>finished</th>{head}</tr>"
            f"{''.join(rows)}</table>")


def _jobs(sweep: SweepOut) -> str:
    rows = []
    for job in [*sweep.teacher_jobs, *sweep.jobs]:
        overrides = escape(json.dumps(job.overrides, sort_keys=True)) if job.overrides else "(shared teacher)"
        accuracy = (job.metrics or {}).get("student_accuracy", (job.metrics or {}).get("teacher_accuracy"))
        shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "–"
        rows.append(f"<tr><td class=l><a href=\"{escape(job.url)}\">{escape(job.id)}</a></td>"
                    f"<td class=l>{escape(job.status.value)}</td><td class=l><code>{overrides}</code></td>"
                    f"<td>{shown}</td></tr>")
    return f"<table><tr><th>job</th><th>status</th><th>overrides</th><th>top-1</th></tr>{''.join(rows)}</table>"


def render_report(sweep: SweepOut) -> str:
    title = escape(f"Sweep {sweep.name} ({sweep.id})")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{title}</h1><p>Status <b>{escape(sweep.status)}</b>; ranked by "
        f"<b>{escape(sweep.rank_by)}</b> (mean ± sample std over seeds). "
        f"<a href=\"{escape(sweep.links.leaderboard_csv)}\">leaderboard.csv</a></p>"
        f"<h2>Leaderboard</h2>{_leaderboard(sweep)}<h2>Jobs</h2>{_jobs(sweep)}</body></html>"
    )
