"""Artifact storage on the local (or shared) filesystem under DISTILL_HOME.

A job writes into its own folder (the engine's --out folder); the worker then
records what it finds there, and the API serves files only through recorded
rows, re-checking that each resolves inside DISTILL_HOME, so neither a client
name nor a tampered row can reach another file on the server.

- `job_dir(settings, job_id) -> Path`: DISTILL_HOME/jobs/<job_id>/ (the engine's --out folder).
- `record_job_outputs(session, settings, job_id, folder=None) -> list[Artifact]`: walks the job's
  working folder for the files of the artifact manifest (core.publish.manifest) and records each through repository.add_artifact under its storage key `jobs/<id>/<name>`
  (checkpoints are not artifacts). With the S3 backend the folder is a scratch copy whose files the
  worker has already pushed to those keys.
- `artifact_path(settings, artifact) -> Path`: the absolute file, refusing anything that resolves
  outside DISTILL_HOME.
- `content_type_for(name) -> str`: the manifest's media type (re-exported here for the store's callers).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from sqlalchemy.orm import Session

from core.publish.manifest import PATTERNS as ARTIFACT_PATTERNS
from core.publish.manifest import content_type_for  # noqa: F401  (the store's callers import it from here)
from core.redact import scrub_paths
from store import repository
from store.models import Artifact
from store.settings import Settings

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class UnsafeArtifactPath(ValueError):
    """A recorded path points outside DISTILL_HOME (serve nothing; answer 404)."""


def job_dir(settings: Settings, job_id: str) -> Path:
    """The job's folder (not created here: reading a job must not make folders)."""
    if not _SAFE_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return settings.jobs_dir / job_id


def record_job_outputs(
    session: Session, settings: Settings, job_id: str, folder: Path | None = None
) -> list[Artifact]:
    """Record every published file of the job's folder; re-recording (a resumed attempt) replaces rows.

    `folder` defaults to the job's folder under DISTILL_HOME; a scratch folder elsewhere (S3 backend)
    is recorded by key, since its files live in the bucket under the same names."""
    folder = folder or job_dir(settings, job_id)
    home = settings.distill_home.resolve()
    in_home = folder.resolve().is_relative_to(home / "jobs")
    recorded: list[Artifact] = []
    for pattern in ARTIFACT_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if not path.is_file():
                continue
            resolved = path.resolve()
            if not resolved.is_relative_to(folder.resolve()):  # a symlink planted in the job folder
                logger.warning("job %s: skipping %s, it resolves outside the job folder", job_id, path)
                continue
            name = path.relative_to(folder).as_posix()
            relpath = resolved.relative_to(home).as_posix() if in_home else f"jobs/{job_id}/{name}"
            recorded.append(
                repository.add_artifact(
                    session, job_id, name, relpath, content_type_for(name), resolved.stat().st_size
                )
            )
    logger.info("job %s: recorded %d artifacts", job_id, len(recorded))
    return recorded


def redact_paths(text: str, settings: Settings) -> str:
    """`text` with server folders replaced by placeholders: error messages reach clients, paths must not.

    DISTILL_HOME becomes `<data>`, an operator-registered dataset folder `<dataset:NAME>` (the
    longer first, so a dataset folder inside DISTILL_HOME keeps its own name), any other absolute
    path `<path>`: core.redact.scrub_paths, the one rule, with this deployment's folders.
    """
    known: dict[str | Path, str] = {settings.distill_home: "<data>"}
    for name, root in settings.dataset_roots.items():
        known[root.expanduser().resolve()] = f"<dataset:{name}>"
        known[root] = f"<dataset:{name}>"
    return scrub_paths(text, known)


def artifact_path(settings: Settings, artifact: Artifact) -> Path:
    """The absolute file of a recorded artifact; UnsafeArtifactPath if it resolves outside DISTILL_HOME."""
    home = settings.distill_home.resolve()
    path = (home / artifact.relpath).resolve()
    if not path.is_relative_to(home) or path == home:
        raise UnsafeArtifactPath(f"artifact {artifact.name!r} of job {artifact.job_id} is outside DISTILL_HOME")
    return path
