"""Epoch-end checkpoints: the state a stage needs to continue exactly where it stopped.

A worker can lose its process at any moment, so a checkpoint is written to a temporary
file and renamed over the old one (a reader sees the old or the new file, never half of
one). Files load with `weights_only=True`: only tensors and plain containers, no pickled
code, which is why RNG states are stored as tensors.

Large parts that rarely change (the teacher-map cache: filled in the first epoch, then
fixed) should not be written again at every epoch end, nor uploaded again by a storage
sync. A sub-state that holds the key `SIDE_REVISION` is stored in a side file of its own
(`<stem>.parts/<key path>.r<revision>.pt`), rewritten only when its revision changes; the
main file keeps a reference. The side file is written before the main file that names
it and stale revisions are removed after, so a crash at any point leaves a main file
whose parts exist; a checkpoint whose part is missing is not used (the stage starts over).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_path

log = logging.getLogger(__name__)

# A sub-state holding this key (an int that changes whenever the sub-state's content does) goes to a side file.
SIDE_REVISION = "side_file_revision"
_PART = "side_file_part"  # in the main file: the key path of the part stored beside it


class _MissingPart(Exception):
    """A part the main file names is not on disk (e.g. a sync that copied the main file but not its part)."""


class CheckpointFile:
    """One stage's checkpoint file and its side files; remembers which part revisions are on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.parts_dir = self.path.with_name(self.path.stem + ".parts")
        self._on_disk: dict[str, int] = {}  # part key path -> revision this object wrote or read

    def _part_path(self, name: str, revision: int) -> Path:
        return self.parts_dir / f"{name}.r{revision}.pt"

    def save(self, state: dict[str, Any]) -> None:
        """Atomically replace the checkpoint with `state` (tensors, numbers, strings, lists, dicts)."""
        parts: dict[str, dict[str, Any]] = {}
        main = _split(state, "", parts)
        for name, part in parts.items():
            revision = int(part[SIDE_REVISION])
            if self._on_disk.get(name) != revision:
                _write(self._part_path(name, revision), part)
        _write(self.path, main)
        for name, part in parts.items():
            revision = int(part[SIDE_REVISION])
            self._on_disk[name] = revision
            for stale in self.parts_dir.glob(f"{name}.r*.pt"):
                if stale != self._part_path(name, revision):
                    stale.unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        """The saved state, parts put back in place; None when there is no (usable) checkpoint. Tensors load on the CPU."""
        if not self.path.exists():
            return None
        main = torch.load(self.path, map_location="cpu", weights_only=True)
        try:
            return self._join(main)
        except _MissingPart as missing:
            log.warning("checkpoint %s names a missing part (%s): starting the stage over", self.path.name, missing)
            return None

    def _join(self, state: dict[str, Any]) -> dict[str, Any]:
        joined: dict[str, Any] = {}
        for key, value in state.items():
            if isinstance(value, dict) and _PART in value:
                name, revision = str(value[_PART]), int(value[SIDE_REVISION])
                part_path = self._part_path(name, revision)
                if not part_path.exists():
                    raise _MissingPart(part_path.name)
                joined[key] = torch.load(part_path, map_location="cpu", weights_only=True)
                self._on_disk[name] = revision
            elif isinstance(value, dict):
                joined[key] = self._join(value)
            else:
                joined[key] = value
        return joined


def _split(state: dict[str, Any], prefix: str, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`state` with every sub-state holding `SIDE_REVISION` replaced by a reference (collected into `parts`)."""
    main: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, dict) and SIDE_REVISION in value:
            name = f"{prefix}{key}"
            parts[name] = value
            main[key] = {_PART: name, SIDE_REVISION: int(value[SIDE_REVISION])}
        elif isinstance(value, dict):
            main[key] = _split(value, f"{prefix}{key}.", parts)
        else:
            main[key] = value
    return main


def _write(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` as the checkpoint at `path` (every part written; a stage keeps a `CheckpointFile` instead)."""
    CheckpointFile(path).save(state)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state at `path`, or None when there is no usable checkpoint yet. Tensors load on the CPU."""
    return CheckpointFile(path).load()


def rng_state() -> dict[str, Any]:
    """The global torch RNG streams (CPU and every CUDA device), e.g. for dropout."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
