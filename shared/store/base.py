"""The store interface every backend implements, and the key rules they share."""

from __future__ import annotations

import builtins
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import UnsafePath

CHUNK = 8 * 1024**2


@dataclass(frozen=True)
class ObjectInfo:
    """One written object, as the manifest lists it."""

    key: str
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class ObjectStat:
    """One stored object as a provenance record names it: its size and the store's own
    identity of its content (S3: the ETag; a local file: its modification time and size)."""

    key: str
    bytes: int
    etag: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "bytes": self.bytes, "etag": self.etag}


def safe_key(key: str) -> str:
    """Normalise a relative key; refuse anything that could leave the store's root."""
    if not key or "\\" in key or "\x00" in key:
        raise UnsafePath(f"unsafe object key {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", ".") for part in key.split("/")):
        raise UnsafePath(f"object key {key!r} must be relative and contain no '.' or '..'")
    return path.as_posix()


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class ObjectStore(ABC):
    """The operations jobs need, over keys relative to ``self.uri``."""

    uri: str

    @abstractmethod
    def child(self, prefix: str) -> ObjectStore:
        """A store rooted ``prefix`` below this one."""

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{safe_key(key)}"

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> ObjectInfo: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    def head_bytes(self, key: str, n: int) -> bytes:
        """The first ``n`` bytes of an object (a header), without reading the rest where the
        backend allows (a ranged GET on S3)."""
        return self.get_range(key, 0, n)

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        """``data[start:end]`` of an object's bytes ``data`` (Python's slice rules: clipped to
        its size, ``end=None`` to its end, a negative bound counted from the end), reading only
        those where the backend allows (a ranged GET on S3, a seek on disk)."""
        return self.get_bytes(key)[slice(start, end)]

    def entries(self, prefix: str = "") -> tuple[builtins.list[str], builtins.list[str]]:
        """(names of the files, names of the sub-folders) immediately below ``prefix``, sorted:
        one delimited listing on S3, where ``list`` would walk every object below."""
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        files = sorted(key[len(base) :] for key in self.list(prefix) if "/" not in key[len(base) :])
        return files, self.children(prefix)

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> Path: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    def stat(self, key: str) -> ObjectStat:
        """Size and content identity of one object (backends that know an ETag give it)."""
        return ObjectStat(key, self.size(key), None)

    def stats(self, prefix: str = "") -> Iterator[ObjectStat]:
        """``stat`` of every key below ``prefix``, in lexical order (S3: from the listing)."""
        for key in self.list(prefix):
            yield self.stat(key)

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys below ``prefix`` (relative to this store), in lexical order."""

    @abstractmethod
    def children(self, prefix: str = "") -> builtins.list[str]:
        """Names of the immediate sub-folders below ``prefix`` (S3: common prefixes)."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` does not exist yet; True if this call created it."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key below ``prefix``; returns how many were removed."""
