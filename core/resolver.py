"""How the engine reads what a spec names by reference: an uploaded dataset's id, the teacher's weights.

A spec names its data by `dataset.name`, `dataset.id` or `dataset.path`, and given teacher
weights by `teacher.weights`, which is an upload's id for a service and a file path on the
command line. The engine never guesses what such a reference means: the host that accepted
the spec passes a `Resolver`. A worker's resolver looks the id up in its store and returns a
local copy of the upload; the command line's (`LocalFiles`) reads paths as they are. So the
spec the engine holds is always the spec its client sent: no server path ever enters it, nor
anything derived from it (metrics.json, the report, the resume identity of the out folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from core.errors import DataError


class Resolver(Protocol):
    """Turns a spec's references into files this machine can read; raises the user's error when it cannot."""

    def resolve_dataset(self, dataset_id: str) -> Path:
        """The ImageFolder tree or .npz file of the upload `dataset.id`; DataError on `dataset.id` when unknown."""

    def resolve_weights(self, reference: str) -> Path:
        """The weights file `teacher.weights` names; WeightsError on `teacher.weights` when unknown."""


class LocalFiles:
    """The command line's resolver: `teacher.weights` is a path on this machine, and dataset ids mean nothing
    here (they name a server's uploads); a missing weights file is reported when the teacher is loaded."""

    def resolve_dataset(self, dataset_id: str) -> Path:
        raise DataError(
            f"dataset '{dataset_id}' is the id of a server's upload; outside a server give dataset.path "
            "(an ImageFolder tree or a .npz file) or dataset.name",
            field="dataset.id",
        )

    def resolve_weights(self, reference: str) -> Path:
        return Path(reference)
