"""core.spec.sweep: grid expansion and the seed-grouped leaderboard, as plain functions."""

from __future__ import annotations

import pytest

from core.spec.sweep import SweepError, expand, leaderboard, mean_std, teacher_groups
from tests.worker.jobspecs import tiny_spec


def test_overrides_create_missing_levels_and_blame_the_base_for_its_own_errors() -> None:
    children = expand(tiny_spec(), {"loss.explanation.weight": [0.5, 2.0]}, 64)
    assert [child.spec["loss"]["explanation"]["weight"] for child in children] == [0.5, 2.0]

    with pytest.raises(SweepError) as raised:
        expand(tiny_spec(training={"lr": -1}), {"training.seed": [0]}, 64)
    assert raised.value.field == "base.training.lr"


def test_teacher_groups_split_only_on_dataset_and_teacher_fields() -> None:
    children = expand(tiny_spec(), {"method": ["kd", "e2kd"], "teacher.epochs": [1, 2], "training.seed": [0, 1]}, 64)
    groups = teacher_groups(children)
    assert sorted(len(group) for group in groups.values()) == [4, 4]


def test_leaderboard_groups_seeds_ranks_lower_ece_first_and_puts_unfinished_last() -> None:
    rows = leaderboard(
        [({"method": "kd", "training.seed": 0}, {"ece": 0.2}), ({"method": "kd", "training.seed": 1}, {"ece": 0.4}),
         ({"method": "e2kd", "training.seed": 0}, {"ece": 0.1}), ({"method": "at", "training.seed": 0}, None)],
        "ece",
    )  # fmt: skip
    assert [(row["config"]["method"], row["finished"], row["runs"]) for row in rows] == [
        ("e2kd", 1, 1), ("kd", 2, 2), ("at", 0, 1),
    ]  # fmt: skip
    assert rows[1]["metrics"]["ece"]["mean"] == pytest.approx(0.3)
    assert mean_std([0.2, 0.4])[1] == pytest.approx(0.141421, rel=1e-5) and mean_std([]) == (None, None)
