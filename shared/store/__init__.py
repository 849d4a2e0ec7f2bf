"""Object stores: ``s3://bucket/prefix`` through boto3, and plain paths or ``file://`` on disk.

A store is rooted at a URI; keys are relative POSIX paths below it and can never escape it
(``..``, absolute keys and backslashes are refused). Writes are all-or-nothing: S3 PUTs are
atomic, and on disk we write a temporary file and rename it. ``put_if_absent`` is the commit
primitive for manifests: ``If-None-Match: *`` on S3, an exclusive hard link on disk.

Stores pickle without their boto3 client, so Dask workers can write results straight to them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from shared.errors import InvalidInput
from shared.settings import Settings, get_settings
from shared.store.base import ObjectInfo, ObjectStat, ObjectStore, safe_key
from shared.store.local import LocalStore
from shared.store.s3 import S3Store

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStat",
    "ObjectStore",
    "S3Store",
    "open_store",
    "safe_key",
    "split_uri",
]


def open_store(uri: str, settings: Settings | None = None) -> ObjectStore:
    """A store rooted at ``uri``: ``s3://bucket[/prefix]``, ``file:///path`` or a plain path."""
    settings = settings or get_settings()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidInput(f"S3 URI without a bucket: {uri!r}")
        prefix = parsed.path.strip("/")
        if prefix:
            safe_key(prefix)
        return S3Store(parsed.netloc, prefix, settings)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStore(Path(uri))
    raise InvalidInput(f"unsupported URI scheme {parsed.scheme!r} in {uri!r} (use s3:// or a path)")


def split_uri(uri: str) -> tuple[str, str]:
    """(parent URI, last component): the store an input lives in and its name."""
    stripped = uri.rstrip("/")
    parent, _, name = stripped.rpartition("/")
    return parent or ".", name
