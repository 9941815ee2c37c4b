"""Datasets registered by reference: `POST /v1/datasets` with a JSON body naming an `s3://bucket/prefix/`.

The objects stay in the bucket. Registration lists them once (core.data.bucket: classes,
counts, held-out split, total bytes) and records the dataset like an upload, owned by the
caller; workers copy the objects on demand (worker.bucket_datasets). The service's
S3-compatible settings (AWS_* variables) read the bucket. Problems are the user's 4xx
errors naming the field: a malformed uri, an empty prefix, no classes, an unreadable bucket.
"""

from __future__ import annotations

import logging

from pydantic import Field
from sqlalchemy.orm import Session

from core.data import bucket
from core.strict import StrictModel
from store import repository
from store.models import DatasetRecord

log = logging.getLogger(__name__)


class BucketDatasetIn(StrictModel):
    """The JSON body of a registration by reference."""

    uri: str = Field(description="s3://bucket/prefix/ holding an ImageFolder tree or train-*.tar / val-*.tar shards.",
                     min_length=6, max_length=480)
    name: str | None = Field(None, max_length=200, description="A name to show; defaults to the prefix's last part.")


def register_bucket_dataset(session: Session, body: BucketDatasetIn, owner: str | None) -> DatasetRecord:
    """List the prefix once and record the dataset (`kind` s3-imagefolder or s3-shards, `relpath` the uri)."""
    client = bucket.s3_client()
    objects = bucket.list_objects(client, body.uri)
    summary = bucket.summarise(client, body.uri, objects)
    _, prefix = bucket.parse_uri(body.uri)
    name = body.name or (prefix.rstrip("/").rsplit("/", 1)[-1] or bucket.parse_uri(body.uri)[0])
    record = DatasetRecord(
        name=name, kind=f"s3-{summary.layout}", num_classes=len(summary.class_names), in_channels=summary.in_channels,
        class_names={"names": summary.class_names}, num_train=summary.num_train, num_test=summary.num_test,
        test_split=summary.test_split, relpath=body.uri, size_bytes=summary.size_bytes, owner=owner,
    )
    repository.create_dataset(session, record)
    log.info("dataset %s: registered by reference (%s, %d classes, %d train, %d test, %d bytes)", record.id,
             record.kind, record.num_classes, record.num_train, record.num_test, record.size_bytes)
    return record
