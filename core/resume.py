"""What lets an out folder be resumed: the run's identity and its finished stages (`run_state.json`).

A rerun with the same folder must continue the same run and never mix two specs, so the folder
remembers a digest of the spec (`spec_sha256` in run_state.json and metrics.json) and refuses
another one. The digest is taken over the spec as its client sent it (upload ids, never the
paths a worker reads them from), so two workers with different data folders resume each other's
runs. Folders written before that rule held a digest over the worker's paths; they are
recognised by recomputing that digest (`legacy_digest`) and then carry the new identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic
from core.distributed import is_main
from core.errors import SpecError
from core.resolver import Resolver
from core.spec import ExportSpec, JobSpec, StudentSpec, TeacherSpec, TrainingSpec
from core.terms.registry import identity_loss

log = logging.getLogger(__name__)

RUN_STATE = "run_state.json"
DIGEST_KEY = "spec_sha256"  # the on-disk name (run_state.json, metrics.json): kept for folders already written


def resume_digest(spec: JobSpec) -> str:
    """The identity of a run: canonical JSON of every spec field after preset merging and defaults.

    Loss units added later leave the identity while at their defaults (core.terms.registry.identity_loss),
    and so does the `export` block, so an out folder written before a unit existed keeps its identity and still resumes.
    """
    return _digest(spec.model_dump(mode="json"))


def legacy_digest(spec: JobSpec, resolver: Resolver) -> str | None:
    """The identity a worker gave this run before specs kept their upload ids: the digest of the spec with
    `dataset.id` replaced by `dataset.path` and `teacher.weights` by the file the resolver reads.

    None when the spec names no upload (its identity never depended on a path). Only the machine
    (and data folder) that wrote such a folder resolves the same paths, as before.
    """
    document = spec.model_dump(mode="json")
    dataset, teacher = document["dataset"], document["teacher"]
    if not dataset.get("id") and not teacher.get("weights"):
        return None
    if dataset.get("id"):
        dataset["path"], dataset["id"] = str(resolver.resolve_dataset(dataset["id"])), None
    if teacher.get("weights"):
        teacher["weights"] = str(resolver.resolve_weights(teacher["weights"]))
    return _digest(document)


# Fields added to a block after run folders were written: at their defaults they are not part of the identity.
LATER_FIELDS: dict[str, tuple[str, ...]] = {
    "training": ("milestones", "step_size", "gamma", "warmup_epochs", "label_smoothing", "devices"),
    "student": ("weights", "head"),
    "teacher": ("normalize", "class_names"),
}


def _drop_later_defaults(document: dict[str, Any]) -> None:
    """Remove the LATER_FIELDS that hold their defaults, so a folder written before they existed still resumes."""
    models = {"training": TrainingSpec, "student": StudentSpec, "teacher": TeacherSpec}
    for block, names in LATER_FIELDS.items():
        fields = models[block].model_fields
        for name in names:
            if name in document.get(block, {}) and document[block][name] == fields[name].get_default(
                    call_default_factory=True):
                del document[block][name]


def identity_document(document: dict[str, Any]) -> dict[str, Any]:
    """The spec dump a run's identity is taken over: fields added after runs were first written are
    dropped while at their defaults (a test pins that every later field is listed here)."""
    document["loss"] = identity_loss(document["loss"])
    _drop_later_defaults(document)
    if document.get("export") == ExportSpec().model_dump(mode="json"):
        del document["export"]  # the export block came later too: at its default it is not part of the identity
    return document


def _digest(document: dict[str, Any]) -> str:
    canonical = json.dumps(identity_document(document), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_json(path: Path, payload: Any) -> None:
    """A JSON document of the out folder, replaced atomically (an interruption never leaves half a file)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False))


class RunState:
    """Which stages of this out folder are finished, with their history and seconds (run_state.json)."""

    def __init__(self, path: Path, digest: str, stages: dict[str, dict[str, Any]]) -> None:
        self.path, self.digest, self.stages = path, digest, stages

    @classmethod
    def open(cls, out_dir: Path, spec: JobSpec, resolver: Resolver) -> RunState:
        """The folder's state for `spec` (a fresh one in a new folder); SpecError when it holds another spec's run."""
        path, digest = out_dir / RUN_STATE, resume_digest(spec)
        if not path.exists():
            state = cls(path, digest, {})
            state.save()
            return state
        saved = json.loads(path.read_text())
        state = cls(path, digest, saved.get("stages", {}))
        if saved.get(DIGEST_KEY) == digest:
            return state
        if saved.get(DIGEST_KEY) is None or saved.get(DIGEST_KEY) != legacy_digest(spec, resolver):
            raise SpecError(
                f"the out folder {out_dir} holds a run of a different spec; use a new folder for a new spec"
            )
        log.info("%s: written before specs kept their upload ids; resuming it under the path-free identity", path)
        state.save()
        return state

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def complete(self, stage: str, seconds: float, history: list[dict[str, Any]] | None = None) -> None:
        self.stages[stage] = {"seconds": seconds, "history": history or []}
        self.save()

    def history(self, stage: str) -> list[dict[str, Any]]:
        return list(self.stages.get(stage, {}).get("history", []))

    def save(self) -> None:
        if not is_main():
            return  # on several ranks rank 0 keeps the folder's files; the others hold the same state in memory
        write_json(self.path, {DIGEST_KEY: self.digest, "stages": self.stages})
