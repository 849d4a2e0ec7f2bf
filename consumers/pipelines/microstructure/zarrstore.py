"""A zarr 3 ``Store`` over our ``ObjectStore``, so Zarr reads and writes go through the same code
as every other object a job touches.

Why not zarr's own ``FsspecStore`` over s3fs: the endpoint (``VOXFLEET_S3_ENDPOINT_URL``), the
retry budget and the credentials chain would be configured a second time, in s3fs's terms; and
an S3 failure inside a Dask task would surface as an s3fs/aiohttp exception that the consumer
cannot classify. Through ``ObjectStore`` a 5xx is our ``TransientError`` (retried), a refusal a
``PermanentStoreError`` (failed), and keys are checked the same way (no ``..``). The store
pickles without its boto3 client, so Dask workers open their own and read and write their own
chunks.

The object store API is synchronous (boto3); each call runs in a thread so that zarr can still
keep many chunk requests in flight. Byte ranges (a sharded array's index and inner chunks) are
ranged reads of the object, never the whole of it: a shard can hold gigabytes.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from shared.errors import MissingInput
from shared.store import ObjectInfo, ObjectStore, S3Store

# boto3 creates clients from a shared default session, which is not thread-safe: make the
# client once, under a lock, before fanning calls out to threads.
_CLIENT_LOCK = threading.Lock()


def _ensure_client(objects: ObjectStore) -> None:
    if isinstance(objects, S3Store) and objects._client is None:
        with _CLIENT_LOCK:
            _ = objects.client


def _read(objects: ObjectStore, key: str, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return objects.get_bytes(key)
    if isinstance(byte_range, RangeByteRequest):
        return objects.get_range(key, byte_range.start, byte_range.end)
    if isinstance(byte_range, OffsetByteRequest):
        return objects.get_range(key, byte_range.offset)
    if isinstance(byte_range, SuffixByteRequest):
        # data[-0:] would be all of it; zarr means none of it.
        return objects.get_range(key, -byte_range.suffix) if byte_range.suffix else b""
    raise TypeError(f"unexpected byte range {byte_range!r}")


class ObjectZarrStore(Store):
    """Zarr keys below an ``ObjectStore`` root (local folder or ``s3://bucket/prefix``)."""

    supports_writes = True
    supports_listing = True
    # ObjectStore has no single-key delete. Arrays written here set write_empty_chunks, so
    # zarr never needs to delete a chunk that became all fill value.
    supports_deletes = False

    def __init__(self, objects: ObjectStore, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.objects = objects
        # What this instance wrote (key -> size and checksum), for the manifest: the writer
        # of a chunk is the only one who saw its bytes.
        self._written: dict[str, ObjectInfo] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_written"] = {}  # records stay with the process that wrote
        return state

    def take_written(self, keys: Iterable[str] | None = None) -> builtins.list[ObjectInfo]:
        """Forget and return the records of ``keys`` (all of them by default)."""
        chosen = [*self._written] if keys is None else [*keys]
        return [self._written.pop(key) for key in chosen]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObjectZarrStore)
            and other.objects.uri == self.objects.uri
            and other.read_only == self.read_only
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.objects.uri))

    def __repr__(self) -> str:
        return f"ObjectZarrStore({self.objects.uri!r})"

    def with_read_only(self, read_only: bool = False) -> ObjectZarrStore:
        return ObjectZarrStore(self.objects, read_only=read_only)

    async def _call(self, fn: Any, *args: Any) -> Any:
        _ensure_client(self.objects)
        return await asyncio.to_thread(fn, *args)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        try:
            data = await self._call(_read, self.objects, key, byte_range)
        except MissingInput:
            return None
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(
            await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges))
        )

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self.objects.exists, key))

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        self._written[key] = await self._call(self.objects.put_bytes, key, value.to_bytes())

    async def delete(self, key: str) -> None:
        raise NotImplementedError("ObjectZarrStore does not delete keys")

    async def _keys(self, folder: str) -> builtins.list[str]:
        keys: builtins.list[str] = await self._call(lambda: [*self.objects.list(folder)])
        return keys

    async def list(self) -> AsyncIterator[str]:
        for key in await self._keys(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._keys(prefix.rstrip("/")):
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # One delimited listing: the members of a group, not every chunk of every array in it.
        files, folders = await self._call(self.objects.entries, prefix.rstrip("/"))
        for name in sorted({*files, *folders}):
            yield name
