"""Object stores: ``s3://bucket/prefix`` through boto3, and plain paths or ``file://`` on disk.

A store is rooted at a URI; keys are relative POSIX paths below it and can never escape it
(``..``, absolute keys and backslashes are refused). Writes are all-or-nothing: S3 PUTs are
atomic, and on disk we write a temporary file and rename it. ``put_if_absent`` is the commit
primitive for manifests: ``If-None-Match: *`` on S3, an exclusive hard link on disk.

Stores pickle without their boto3 client, so Dask workers can write results straight to them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from shared.errors import (
    InvalidInput,
    MissingInput,
    PermanentStoreError,
    TransientError,
    UnsafePath,
)
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_CHUNK = 8 * 1024**2


@dataclass(frozen=True)
class ObjectInfo:
    """One written object, as the manifest lists it."""

    key: str
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "bytes": self.bytes, "sha256": self.sha256}


def safe_key(key: str) -> str:
    """Normalise a relative key; refuse anything that could leave the store's root."""
    if not key or "\\" in key or "\x00" in key:
        raise UnsafePath(f"unsafe object key {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", ".") for part in key.split("/")):
        raise UnsafePath(f"object key {key!r} must be relative and contain no '.' or '..'")
    return path.as_posix()


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
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

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> Path: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys below ``prefix`` (relative to this store), in lexical order."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` does not exist yet; True if this call created it."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key below ``prefix``; returns how many were removed."""


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
        return ObjectInfo(safe_key(key), len(data), _sha256_bytes(data))

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with path.open("rb") as src:
            target = self._atomic_write(key, lambda fh: shutil.copyfileobj(src, fh, _CHUNK))
        return ObjectInfo(safe_key(key), target.stat().st_size, _sha256_file(target))

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


_PERMANENT_S3 = {
    "AccessDenied",
    "AllAccessDisabled",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "AccountProblem",
}
_MISSING_S3 = {"NoSuchKey", "404", "NotFound"}


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Translate botocore failures into our tree: missing, permanent, or transient."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING_S3:
            raise MissingInput(f"not found: {what}") from None
        if code in _PERMANENT_S3 or status in (401, 403):
            raise PermanentStoreError(f"S3 refused {what}: {code}") from None
        if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            raise TransientError(f"S3 error on {what}: {code} (HTTP {status})") from exc
        raise PermanentStoreError(f"S3 error on {what}: {code} (HTTP {status})") from None
    except NoCredentialsError:
        raise PermanentStoreError(f"no AWS credentials for {what}") from None
    except (EndpointConnectionError, ConnectionError) as exc:
        raise TransientError(f"S3 unreachable for {what}: {type(exc).__name__}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"S3 client error on {what}: {type(exc).__name__}") from exc


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = settings.s3_endpoint_url
        self.region = settings.s3_region
        self.max_attempts = settings.s3_max_attempts
        self.multipart_threshold = settings.s3_multipart_threshold
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: S3Client | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None  # boto3 clients do not pickle; each process makes its own
        return state

    @property
    def client(self) -> S3Client:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=Config(
                    retries={"mode": "standard", "max_attempts": self.max_attempts},
                    s3={"addressing_style": "path"} if self.endpoint_url else None,
                    connect_timeout=10,
                    read_timeout=120,
                ),
            )
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=_CHUNK * 2
        )

    def child(self, prefix: str) -> S3Store:
        clone = S3Store.__new__(S3Store)
        clone.__dict__.update(self.__getstate__())
        clone.prefix = _join(self.prefix, safe_key(prefix))
        clone.uri = f"s3://{self.bucket}/{clone.prefix}"
        clone._client = self._client
        return clone

    def _key(self, key: str) -> str:
        return _join(self.prefix, safe_key(key))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with _s3_errors(self.uri_for(key)):
            if len(data) > self.multipart_threshold:
                self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, self._key(key), Config=self._transfer_config()
                )
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return ObjectInfo(safe_key(key), len(data), _sha256_bytes(data))

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with _s3_errors(self.uri_for(key)):
            self.client.upload_file(
                str(path), self.bucket, self._key(key), Config=self._transfer_config()
            )
        return ObjectInfo(safe_key(key), path.stat().st_size, _sha256_file(path))

    def get_bytes(self, key: str) -> bytes:
        with _s3_errors(self.uri_for(key)):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))[
                "Body"
            ].read()
            return body

    def get_file(self, key: str, dest: Path) -> Path:
        with _s3_errors(self.uri_for(key)):
            self.client.download_file(
                self.bucket, self._key(key), str(dest), Config=self._transfer_config()
            )
        return dest

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except MissingInput:
            return False
        return True

    def size(self, key: str) -> int:
        with _s3_errors(self.uri_for(key)):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return int(head["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[str]:
        full = _join(self.prefix, safe_key(prefix)) if prefix else self.prefix
        start = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors(f"s3://{self.bucket}/{full}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{full}/" if full else ""):
                for obj in page.get("Contents", []):
                    yield obj["Key"][start:]

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(self.uri_for(key)):
                try:
                    self.client.put_object(
                        Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                    )
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    if code == "PreconditionFailed":
                        return False
                    raise
        except TransientError:
            # A retried conditional PUT whose first try landed answers 412 or 409; either way
            # the object may now exist, and only its content tells whose it is.
            if self.exists(key) and self.get_bytes(key) == data:
                return True
            raise
        return True

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(k) for k in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with _s3_errors(f"s3://{self.bucket}/{_join(self.prefix, prefix)}"):
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
        return len(keys)


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
