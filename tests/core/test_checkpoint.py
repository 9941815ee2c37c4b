"""Checkpoint files: parts that rarely change live in side files, written only when their revision changes."""

from __future__ import annotations

from pathlib import Path

import torch

from core.train.checkpoint import SIDE_REVISION, CheckpointFile, load_checkpoint


def _state(revision: int, fill: float) -> dict:
    cache = {"maps": torch.full((4, 1, 2, 2), fill), SIDE_REVISION: revision}
    return {"epoch": revision, "objective": {"signals": {"target_maps": cache}, "terms": {}}}


def test_a_part_round_trips_and_is_rewritten_only_when_its_revision_changes(tmp_path: Path) -> None:
    checkpoint = CheckpointFile(tmp_path / "stage.pt")
    checkpoint.save(_state(1, 1.0))
    part = tmp_path / "stage.parts" / "objective.signals.target_maps.r1.pt"
    first_write = part.stat().st_mtime_ns, part.stat().st_ino
    checkpoint.save({**_state(1, 1.0), "epoch": 2})
    assert (part.stat().st_mtime_ns, part.stat().st_ino) == first_write  # same revision: not written again

    loaded = load_checkpoint(tmp_path / "stage.pt")
    assert loaded is not None and loaded["epoch"] == 2
    assert torch.equal(loaded["objective"]["signals"]["target_maps"]["maps"], torch.full((4, 1, 2, 2), 1.0))

    checkpoint.save(_state(2, 2.0))
    assert [p.name for p in (tmp_path / "stage.parts").iterdir()] == ["objective.signals.target_maps.r2.pt"]
    loaded = load_checkpoint(tmp_path / "stage.pt")
    assert loaded is not None and float(loaded["objective"]["signals"]["target_maps"]["maps"].max()) == 2.0


def test_a_resumed_stage_does_not_rewrite_the_part_it_loaded(tmp_path: Path) -> None:
    CheckpointFile(tmp_path / "stage.pt").save(_state(3, 1.0))
    part = tmp_path / "stage.parts" / "objective.signals.target_maps.r3.pt"
    stamp = part.stat().st_ino
    resumed = CheckpointFile(tmp_path / "stage.pt")
    assert resumed.load() is not None
    resumed.save({**_state(3, 1.0), "epoch": 4})
    assert part.stat().st_ino == stamp


def test_a_checkpoint_whose_part_is_missing_is_not_used(tmp_path: Path) -> None:
    CheckpointFile(tmp_path / "stage.pt").save(_state(1, 1.0))
    (tmp_path / "stage.parts" / "objective.signals.target_maps.r1.pt").unlink()
    assert load_checkpoint(tmp_path / "stage.pt") is None  # the stage starts over rather than resume half a state
