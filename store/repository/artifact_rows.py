"""Artifact rows: the database record of each file a job produced (the file itself is in storage).

Recording an artifact bumps the job's version, because a client watching the job sees its artifact
list change; `store.artifacts` stores the files and calls `add_artifact` for each.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import Artifact, Job, utcnow
from store.repository.errors import NotFound


def add_artifact(session: Session, job_id: str, name: str, relpath: str, content_type: str, size_bytes: int) -> Artifact:
    """Record (or replace, on a resumed attempt) one artifact of a job. NotFound for an unknown job."""
    if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
        session.commit()
        raise NotFound(f"job {job_id} not found")
    values = {"relpath": relpath, "content_type": content_type, "size_bytes": size_bytes, "created_at": utcnow()}
    for _ in range(2):  # a concurrent insert of the same name turns the second try into a replace
        artifact = session.scalars(
            select(Artifact)
            .where(Artifact.job_id == job_id, Artifact.name == name)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if artifact is None:
            artifact = Artifact(job_id=job_id, name=name, **values)
            session.add(artifact)
        else:
            for key, value in values.items():
                setattr(artifact, key, value)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(version=Job.version + 1, updated_at=values["created_at"])
            .execution_options(synchronize_session=False)
        )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            continue
        return artifact
    raise RuntimeError(f"job {job_id}: could not record artifact {name!r}")


def get_artifact(session: Session, job_id: str, name: str) -> Artifact:
    """NotFound when the job has no artifact of that exact name."""
    artifact = session.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    ).one_or_none()
    session.commit()
    if artifact is None:
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    return artifact
