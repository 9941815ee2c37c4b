"""Sweeps: a base spec and a grid of dotted-path overrides -> one child spec per combination,
and the leaderboard that groups children differing only in `training.seed`.

Pure functions over plain dicts, so the API (validation up front, 422 naming the path and the
combination), the store (children rows) and the CLI all apply the same rules.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.spec import JobSpec

SEED_PATH = "training.seed"

# Leaderboard columns: the metric's key in metrics.json and whether higher is better.
LEADERBOARD_METRICS: dict[str, tuple[str, bool]] = {
    "student_accuracy": ("student_accuracy", True),
    "agreement": ("agreement", True),
    "explanation_cosine": ("explanation_cosine", True),
    "ece": ("ece", False),
    "latency_ms": ("student_latency_ms", False),
}
RANK_BY = tuple(LEADERBOARD_METRICS)


class SweepError(ValueError):
    """A grid that cannot become child specs; `field` is the dotted path into the sweep request."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True)
class Child:
    """One combination: the overrides it applies and the full spec document it becomes."""

    index: int
    overrides: dict[str, Any]
    spec: dict[str, Any]


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """`document["a"]["b"]["c"] = value` for path "a.b.c", creating missing levels."""
    *parents, last = path.split(".")
    node = document
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SweepError(f"grid path '{path}': '{part}' is not an object in the base spec", f"grid.{path}")
        node = child
    node[last] = value


def _check_grid(grid: Mapping[str, Sequence[Any]], max_children: int) -> int:
    if not grid:
        raise SweepError("the grid is empty: give at least one path with a list of values", "grid")
    count = 1
    for path, values in grid.items():
        if not path or any(not part for part in path.split(".")):
            raise SweepError(f"grid path {path!r} is not a dotted path like 'loss.explanation.weight'", "grid")
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid path '{path}' needs a non-empty list of values", f"grid.{path}")
        count *= len(values)
    if count > max_children:
        raise SweepError(f"the grid makes {count} children; the limit is {max_children}", "grid")
    return count


def _field_for(error_loc: str, overrides: Mapping[str, Any]) -> str:
    """Blame the grid path the failing field came from, else the base spec."""
    for path in overrides:
        if error_loc == path or error_loc.startswith(path + ".") or path.startswith(error_loc + "."):
            return f"grid.{path}"
    return f"base.{error_loc}" if error_loc else "base"


def expand(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], max_children: int) -> list[Child]:
    """Every combination of the grid applied to `base`, each validated as a JobSpec.

    Raises SweepError naming the offending path and combination; nothing is created for a bad grid."""
    _check_grid(grid, max_children)
    paths = list(grid)
    children = []
    for index, values in enumerate(itertools.product(*(grid[path] for path in paths))):
        overrides = dict(zip(paths, values))
        document = copy.deepcopy(dict(base))
        for path, value in overrides.items():
            set_path(document, path, value)
        try:
            spec = JobSpec.model_validate(document)
        except ValidationError as error:
            problem = error.errors()[0]
            loc = ".".join(str(part) for part in problem["loc"])
            combination = json.dumps(overrides, sort_keys=True)
            raise SweepError(f"combination {index} {combination}: {loc or 'spec'}: {problem['msg']}",
                             _field_for(loc, overrides)) from None
        children.append(Child(index, overrides, spec.model_dump(mode="json")))
    return children


def config_key(overrides: Mapping[str, Any]) -> str:
    """The group a child belongs to on the leaderboard: its overrides without the seed."""
    return json.dumps({k: v for k, v in overrides.items() if k != SEED_PATH}, sort_keys=True)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0 for one value); (None, None) for none."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def leaderboard(children: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]], rank_by: str) -> list[dict[str, Any]]:
    """Rows of (config, seeds, runs, finished, metric -> {mean, std}) ranked by `rank_by`'s mean.

    `children` are (overrides, metrics or None while unfinished). Groups without a finished child
    rank last."""
    groups: dict[str, dict[str, Any]] = {}
    for overrides, metrics in children:
        key = config_key(overrides)
        group = groups.setdefault(key, {"config": json.loads(key), "seeds": [], "runs": 0, "values": {}})
        group["runs"] += 1
        if metrics is None:
            continue
        group["seeds"].append(overrides.get(SEED_PATH))
        for column, (source, _) in LEADERBOARD_METRICS.items():
            value = metrics.get(source)
            if isinstance(value, (int, float)) and math.isfinite(value):
                group["values"].setdefault(column, []).append(float(value))
    rows = []
    for group in groups.values():
        values = group.pop("values")
        group["finished"] = len(group["seeds"])
        group["metrics"] = {
            column: dict(zip(("mean", "std"), mean_std(values.get(column, [])))) for column in LEADERBOARD_METRICS
        }
        rows.append(group)
    higher_better = LEADERBOARD_METRICS[rank_by][1]

    def order(row: dict[str, Any]) -> tuple[int, float]:
        mean = row["metrics"][rank_by]["mean"]
        if mean is None:
            return (1, 0.0)
        return (0, -mean if higher_better else mean)

    rows.sort(key=order)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def leaderboard_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard as CSV: rank, config (JSON), seeds, runs, then mean and std of every metric."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["rank", "config", "seeds", "runs", "finished"]
    for column in LEADERBOARD_METRICS:
        header += [f"{column}_mean", f"{column}_std"]
    writer.writerow(header)
    for row in rows:
        line = [row["rank"], json.dumps(row["config"], sort_keys=True), " ".join(str(s) for s in row["seeds"]),
                row["runs"], row["finished"]]
        for column in LEADERBOARD_METRICS:
            stats = row["metrics"][column]
            line += ["" if stats["mean"] is None else f"{stats['mean']:.6g}",
                     "" if stats["std"] is None else f"{stats['std']:.6g}"]
        writer.writerow(line)
    return buffer.getvalue()


def teacher_groups(children: Sequence[Child]) -> dict[str, list[Child]]:
    """Children that train their teacher, grouped by what the teacher depends on (dataset and teacher
    fields): each group needs one teacher, trained once and shared. Children given weights need none."""
    groups: dict[str, list[Child]] = {}
    for child in children:
        if child.spec["teacher"].get("weights") is None:
            key = json.dumps({"dataset": child.spec["dataset"], "teacher": child.spec["teacher"]}, sort_keys=True)
            groups.setdefault(key, []).append(child)
    return groups
