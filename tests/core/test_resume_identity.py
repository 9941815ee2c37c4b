"""A run's identity ignores spec fields added after run folders were first written, while they hold
their defaults: otherwise every folder written before a new field would silently stop resuming."""

from __future__ import annotations

from typing import Any

import pytest

from core.resume import identity_document
from core.spec import JobSpec
from tests.core.test_run import tiny_spec

# The spec's fields when run folders were first written by this layout (the restructuring's release).
# A new field belongs in core.resume.LATER_FIELDS (or is excluded from the dump at its default); it
# never joins this list.
FIELDS_BEFORE: dict[str, set[str]] = {
    "": {"dataset", "export", "loss", "method", "name", "report", "student", "teacher", "training"},
    "dataset": {"augment", "id", "image_size", "name", "path", "shots_per_class", "split_seed", "test_fraction"},
    "report": {"heatmaps", "latency_runs"},
    "student": {"arch", "layer"},
    "teacher": {"arch", "epochs", "layer", "weights"},
    "training": {"batch_size", "device", "epochs", "lr", "momentum", "optimizer", "precision", "scheduler", "seed",
                 "weight_decay"},
    "loss.explanation": {"distance", "every", "explainer", "target", "weight"},
}


def _block(document: dict[str, Any], path: str) -> dict[str, Any]:
    for key in filter(None, path.split(".")):
        document = document.get(key) or {}
    return document


@pytest.mark.parametrize("method", ["kd", "e2kd", "xdistill", "oracle"])
def test_a_default_spec_has_only_the_fields_runs_were_first_written_with(method: str) -> None:
    document = identity_document(JobSpec.model_validate(tiny_spec(method)).model_dump(mode="json"))
    for path, known in FIELDS_BEFORE.items():
        added = set(_block(document, path)) - known
        assert not added, f"{path or 'spec'} gained {sorted(added)} in the resume identity: list them in LATER_FIELDS"


def test_a_later_field_set_away_from_its_default_changes_the_identity() -> None:
    plain = identity_document(JobSpec.model_validate(tiny_spec("kd")).model_dump(mode="json"))
    smoothed = identity_document(JobSpec.model_validate(
        tiny_spec("kd", training={"label_smoothing": 0.1})).model_dump(mode="json"))
    assert plain != smoothed
