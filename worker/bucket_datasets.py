"""A dataset registered by reference (`s3://bucket/prefix/`): its objects copied to this machine on demand.

Each job lists the prefix once (a vanished or unreadable bucket fails the job as the user's
`dataset.id` error, and the dataset's record stays), then reads the local copy whose listing
(keys, sizes, ETags) matches, or copies the objects into a new one: under an exclusive file
lock, into a temporary folder renamed into place. Copies live under
`DISTILL_HOME/cache/buckets`, bounded by `DISTILL_BUCKET_CACHE_MB` (default 20480) with
least-recently-used eviction (core.data.store.evict, the image cache's rule).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

from pathlib import Path

from core.data import bucket
from core.data.store import evict, file_lock, touch
from store.models import DatasetRecord
from store.settings import Settings

log = logging.getLogger(__name__)

BUCKET_KINDS = ("s3-imagefolder", "s3-shards")
DEFAULT_BUCKET_CACHE_MB = 20480
FIELD = "dataset.id"


def bucket_cache_bytes() -> int:
    return int(float(os.environ.get("DISTILL_BUCKET_CACHE_MB", DEFAULT_BUCKET_CACHE_MB)) * 1024 * 1024)


def local_tree(settings: Settings, record: DatasetRecord) -> Path:
    """This machine's ImageFolder copy of the bucket dataset `record`, current with the bucket's listing."""
    uri = record.relpath
    client = bucket.s3_client()
    objects = bucket.list_objects(client, uri, field=FIELD)
    listing = hashlib.sha256(uri.encode())
    for obj in sorted(objects, key=lambda o: o.key):
        listing.update(f"|{obj.key}|{obj.size}|{obj.etag}".encode())
    root = Path(settings.distill_home) / "cache" / "buckets"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{record.id}-{listing.hexdigest()[:16]}"
    with file_lock(root, folder.name, shared=False):
        if (folder / ".complete").is_file():
            touch(folder)
            return folder
        summary = bucket.summarise(client, uri, objects, field=FIELD)
        evict(root, bucket_cache_bytes() - summary.size_bytes, keep=folder.name)
        tmp = root / f".{folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            bucket.fetch_tree(client, uri, summary, tmp, field=FIELD)
            (tmp / ".complete").write_text("")
            touch(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("dataset %s: copied %d objects (%d bytes) from its bucket", record.id, len(objects), summary.size_bytes)
    return folder
