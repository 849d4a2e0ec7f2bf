"""Stores on a local disk or shared filesystem: atomic renames, exclusive links."""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput, MissingInput
from shared.store.base import CHUNK, ObjectInfo, ObjectStore, safe_key, sha256_bytes, sha256_file


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self.root / safe_key(prefix))

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def _atomic_write(self, key: str, write: Any) -> Path:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self._atomic_write(key, lambda fh: fh.write(data))
        return ObjectInfo(safe_key(key), len(data), sha256_bytes(data))

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with path.open("rb") as src:
            target = self._atomic_write(key, lambda fh: shutil.copyfileobj(src, fh, CHUNK))
        return ObjectInfo(safe_key(key), target.stat().st_size, sha256_file(target))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingInput(f"not found: {self.uri_for(key)}") from None
        except IsADirectoryError:
            raise InvalidInput(f"is a directory, expected a file: {self.uri_for(key)}") from None

    def get_file(self, key: str, dest: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise MissingInput(f"not found: {self.uri_for(key)}")
        shutil.copyfile(src, dest)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise MissingInput(f"not found: {self.uri_for(key)}") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        found = sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".part")
        )
        yield from found

    def children(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            # link() fails if the target exists, and readers never see a half-written file.
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        if not base.exists():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file()) if base.is_dir() else 1
        if base.is_dir():
            shutil.rmtree(base)
        else:
            base.unlink()
        return count
