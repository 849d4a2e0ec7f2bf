"""A read-only, seekable binary file over one object of an ``ObjectStore``, for the libraries
that read files through a file handle (tifffile, h5py): every read is a ranged read of the
object (a ranged GET on S3), so a reader fetches the bytes it asks for, not the whole object.

Libraries read headers and metadata in many small pieces (a TIFF directory, HDF5's B-trees), so
reads smaller than ``direct`` bytes go through a few cached blocks; a larger read (pixels, an
HDF5 chunk) is fetched exactly, in one request, and not cached. Not thread-safe: one owner, or
a lock around it.

A library that reads through a file handle may wrap what the handle raises in its own error
(h5py turns it into an ``OSError``), which would make a retryable S3 failure look like a corrupt
file: the store's own error is kept in ``failure`` for the reader to raise instead.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any

from shared.errors import VoxfleetError
from shared.store import ObjectStore

BLOCK = 64 * 1024  # small reads are served from blocks this large ...
CACHED_BLOCKS = 32  # ... and this many are kept


class ObjectFile(io.RawIOBase):
    def __init__(
        self,
        store: ObjectStore,
        key: str,
        size: int | None = None,
        block: int = BLOCK,
        direct: int | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.block = block
        self.direct = block if direct is None else direct  # reads this large skip the blocks
        self.name = store.uri_for(key)  # what tifffile and h5py quote in their messages
        self._size = size
        self._pos = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.failure: VoxfleetError | None = None  # the store's error, if a read failed

    def _get(self, start: int, end: int | None) -> bytes:
        try:
            return self.store.get_range(self.key, start, end)
        except VoxfleetError as exc:
            self.failure = exc
            raise

    @property
    def size(self) -> int:
        if self._size is None:
            # The first block answers it for an object smaller than a block: no HEAD.
            first = self._block(0)
            if len(first) < self.block:
                self._size = len(first)
            else:
                try:
                    self._size = self.store.size(self.key)
                except VoxfleetError as exc:
                    self.failure = exc
                    raise
        return self._size

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            block = self._get(index * self.block, (index + 1) * self.block)
            self._blocks[index] = block
            if len(self._blocks) > CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(index)
        return block

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: None}[whence]
        target = (self.size if base is None else base) + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._pos = target
        return target

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), max(0, self.size - self._pos))
        if wanted == 0:
            return 0
        start, end = self._pos, self._pos + wanted
        if wanted >= self.direct:
            data = self._get(start, end)
        else:
            first, last = start // self.block, (end - 1) // self.block
            parts = [self._block(i) for i in range(first, last + 1)]
            offset = start - first * self.block
            data = b"".join(parts)[offset : offset + wanted]
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self._get(self._pos, None) if self._pos < self.size else b""
        self._pos += len(data)
        return data

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation(f"{self.name} is open for reading only")
