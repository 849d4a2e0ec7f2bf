"""Stores on a local disk or shared filesystem: atomic renames, exclusive links."""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput, MissingInput, UnsafePath
from shared.store.base import (
    CHUNK,
    ObjectInfo,
    ObjectStat,
    ObjectStore,
    safe_key,
    sha256_bytes,
    sha256_file,
)


class LocalStore(ObjectStore):
    """Keys are paths below ``root``. ``safe_key`` keeps them lexically inside it; symlinks are
    the other way out, so every write (and every child store) is checked again after the
    links are resolved: a link planted in a results tree that leads elsewhere makes the write
    fail with ``UnsafePath`` instead of following it. Reads follow links (inputs are often
    linked into place), but a child store is never rooted outside its parent."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def child(self, prefix: str) -> LocalStore:
        child = LocalStore(self.root / safe_key(prefix))
        self._contained(child.root, prefix)
        return child

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def _contained(self, path: Path, key: str) -> None:
        """``path`` (resolved) must lie within this store's root."""
        if not path.resolve().is_relative_to(self.root):
            raise UnsafePath(
                f"{self.uri_for(key)} leads outside {self.uri} (a symbolic link); refusing to "
                "write there"
            )

    def _write_path(self, key: str) -> Path:
        """The target of a write, its folder created, never outside the root."""
        target = self._path(key)
        self._contained(target.parent, key)  # before mkdir: it would create outside, too
        target.parent.mkdir(parents=True, exist_ok=True)
        self._contained(target.parent, key)  # a link made in the meantime
        if target.is_symlink():
            raise UnsafePath(f"{self.uri_for(key)} is a symbolic link; refusing to write it")
        return target

    def _atomic_write(self, key: str, write: Any) -> Path:
        target = self._write_path(key)
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
        except (FileNotFoundError, NotADirectoryError):  # the root may be a file, not a folder
            raise MissingInput(f"not found: {self.uri_for(key)}") from None
        except IsADirectoryError:
            raise InvalidInput(f"is a directory, expected a file: {self.uri_for(key)}") from None

    def head_bytes(self, key: str, n: int) -> bytes:
        return self.get_range(key, 0, n)

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        try:
            with self._path(key).open("rb") as fh:
                low, high, _ = slice(start, end).indices(os.fstat(fh.fileno()).st_size)
                fh.seek(low)
                return fh.read(max(0, high - low))
        except (FileNotFoundError, NotADirectoryError):
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
        except (FileNotFoundError, NotADirectoryError):
            raise MissingInput(f"not found: {self.uri_for(key)}") from None

    def stat(self, key: str) -> ObjectStat:
        try:
            info = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingInput(f"not found: {self.uri_for(key)}") from None
        # What a web server's ETag is for a file: it changes when the file is rewritten.
        return ObjectStat(key, info.st_size, f"{info.st_mtime_ns:x}-{info.st_size:x}")

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
        return self.entries(prefix)[1]

    def entries(self, prefix: str = "") -> tuple[builtins.list[str], builtins.list[str]]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return [], []
        found = [*base.iterdir()]
        files = sorted(p.name for p in found if p.is_file() and not p.name.endswith(".part"))
        return files, sorted(p.name for p in found if p.is_dir())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        target = self._write_path(key)
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
        self._contained(base, prefix)
        count = sum(1 for p in base.rglob("*") if p.is_file()) if base.is_dir() else 1
        if base.is_dir():
            shutil.rmtree(base)
        else:
            base.unlink()
        return count
