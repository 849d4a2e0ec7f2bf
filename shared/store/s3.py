"""Stores on S3 (or MinIO / a test server through ``VOXFLEET_S3_ENDPOINT_URL``), via boto3.

Each store reaches its bucket as ``VOXFLEET_S3_SOURCES`` says for its URI (``Settings.s3_source``):
its own endpoint, region and AWS profile, or unsigned requests for a public bucket, which makes
the store read-only.
"""

from __future__ import annotations

import builtins
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import MissingInput, PermanentStoreError, TransientError
from shared.settings import Settings
from shared.store.base import (
    CHUNK,
    ObjectInfo,
    ObjectStat,
    ObjectStore,
    join,
    safe_key,
    sha256_bytes,
    sha256_file,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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


def _classified(exc: Any, what: str) -> Exception:
    """A botocore ClientError as our error tree: missing, permanent, or transient."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _MISSING_S3:
        return MissingInput(f"not found: {what}")
    if code in _PERMANENT_S3 or status in (401, 403):
        return PermanentStoreError(f"S3 refused {what}: {code}")
    if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
        return TransientError(f"S3 error on {what}: {code} (HTTP {status})")
    return PermanentStoreError(f"S3 error on {what}: {code} (HTTP {status})")


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Translate botocore failures into our tree: missing, permanent, or transient."""
    from boto3.exceptions import S3UploadFailedError
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
        raise _classified(exc, what) from exc
    except S3UploadFailedError as exc:
        # upload_file wraps the ClientError it got (found by the permanent-S3-error fault
        # test: an access denial surfaced as an unclassified crash, a 5xx would have too).
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, ClientError):
            raise _classified(inner, what) from exc
        raise TransientError(f"S3 upload failed for {what}") from exc
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
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Chosen once, for the root: children and the copies pickled to Dask workers reach S3
        # the same way as the store they came from.
        source = settings.s3_source(self.uri)
        self.endpoint_url = source.endpoint_url
        self.region = source.region
        self.profile = source.profile
        self.anonymous = source.anonymous
        self.max_attempts = settings.s3_max_attempts
        self.multipart_threshold = settings.s3_multipart_threshold
        self._client: S3Client | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None  # boto3 clients do not pickle; each process makes its own
        return state

    @property
    def client(self) -> S3Client:
        if self._client is None:
            import boto3
            import botocore
            from botocore.config import Config
            from botocore.exceptions import ProfileNotFound

            config = Config(
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                s3={"addressing_style": "path"} if self.endpoint_url else None,
                connect_timeout=10,
                read_timeout=120,
                # Unsigned: botocore then looks for no credentials at all, so a machine with
                # none reads the bucket, and so does one whose keys AWS would refuse (a MinIO's).
                signature_version=botocore.UNSIGNED if self.anonymous else None,
            )
            try:
                make = (
                    boto3.session.Session(profile_name=self.profile).client
                    if self.profile
                    else boto3.client
                )
                self._client = make(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                )
            except ProfileNotFound:
                raise PermanentStoreError(
                    f"no AWS profile {self.profile!r} for {self.uri} (VOXFLEET_S3_SOURCES)"
                ) from None
        return self._client

    def _writable(self, what: str) -> None:
        # Refused here, before any request: a public source is for reading inputs, and S3's own
        # answer to an unsigned write is worse (a bare AccessDenied after the job's work, or,
        # from a world-writable bucket, success).
        if self.anonymous:
            raise PermanentStoreError(
                f"cannot write {what}: an anonymous source in VOXFLEET_S3_SOURCES is read-only"
            )

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=CHUNK * 2
        )

    def child(self, prefix: str) -> S3Store:
        clone = S3Store.__new__(S3Store)
        clone.__dict__.update(self.__getstate__())
        clone.prefix = join(self.prefix, safe_key(prefix))
        clone.uri = f"s3://{self.bucket}/{clone.prefix}"
        clone._client = self._client
        return clone

    def _key(self, key: str) -> str:
        return join(self.prefix, safe_key(key))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self._writable(self.uri_for(key))
        with _s3_errors(self.uri_for(key)):
            if len(data) > self.multipart_threshold:
                self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, self._key(key), Config=self._transfer_config()
                )
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return ObjectInfo(safe_key(key), len(data), sha256_bytes(data))

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        self._writable(self.uri_for(key))
        with _s3_errors(self.uri_for(key)):
            self.client.upload_file(
                str(path), self.bucket, self._key(key), Config=self._transfer_config()
            )
        return ObjectInfo(safe_key(key), path.stat().st_size, sha256_file(path))

    def get_bytes(self, key: str) -> bytes:
        with _s3_errors(self.uri_for(key)):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))[
                "Body"
            ].read()
            return body

    def head_bytes(self, key: str, n: int) -> bytes:
        # At least one byte is asked for, so that a missing object is MissingInput for n=0 too.
        return self.get_range(key, 0, max(n, 1))[:n]

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        if end is None:
            # A suffix or an open range: S3 clips both to the object's size itself.
            asked = f"bytes=-{-start}" if start < 0 else f"bytes={start}-"
        elif start >= 0 and end >= 0:
            if end <= start:
                self.size(key)  # nothing to read, but a missing object is still missing
                return b""
            asked = f"bytes={start}-{end - 1}"
        else:  # a bound counted from the end, and another one: Python's rules need the size
            low, high, _ = slice(start, end).indices(self.size(key))
            return self.get_range(key, low, max(low, high))
        with _s3_errors(self.uri_for(key)):
            try:
                body: bytes = self.client.get_object(
                    Bucket=self.bucket, Key=self._key(key), Range=asked
                )["Body"].read()
            except ClientError as exc:
                # A range that starts at or past the end (or any range of an empty object):
                # S3 answers 416, Python's slice an empty string.
                if str(exc.response.get("Error", {}).get("Code", "")) == "InvalidRange":
                    return b""
                raise
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

    def stat(self, key: str) -> ObjectStat:
        with _s3_errors(self.uri_for(key)):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return ObjectStat(key, int(head["ContentLength"]), str(head["ETag"]).strip('"'))

    def stats(self, prefix: str = "") -> Iterator[ObjectStat]:
        full = join(self.prefix, safe_key(prefix)) if prefix else self.prefix
        start = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors(f"s3://{self.bucket}/{full}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{full}/" if full else ""):
                for obj in page.get("Contents", []):
                    etag = str(obj["ETag"]).strip('"')
                    yield ObjectStat(obj["Key"][start:], int(obj["Size"]), etag)

    def list(self, prefix: str = "") -> Iterator[str]:
        for found in self.stats(prefix):  # the listing carries sizes and ETags anyway
            yield found.key

    def children(self, prefix: str = "") -> builtins.list[str]:
        return self.entries(prefix)[1]

    def entries(self, prefix: str = "") -> tuple[builtins.list[str], builtins.list[str]]:
        full = join(self.prefix, safe_key(prefix)) if prefix else self.prefix
        start = len(f"{full}/") if full else 0
        paginator = self.client.get_paginator("list_objects_v2")
        files: builtins.list[str] = []
        folders: builtins.list[str] = []
        with _s3_errors(f"s3://{self.bucket}/{full}"):
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=f"{full}/" if full else "", Delimiter="/"
            ):
                files.extend(obj["Key"][start:] for obj in page.get("Contents", []))
                folders.extend(
                    c["Prefix"][start:].rstrip("/") for c in page.get("CommonPrefixes", [])
                )
        return sorted(files), sorted(folders)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        self._writable(self.uri_for(key))
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
        # Never "" (everything below the store, a whole bucket for a bucket-root store), and
        # nothing outside it: the same rule as every other key, as on disk.
        prefix = safe_key(prefix)
        self._writable(f"s3://{self.bucket}/{join(self.prefix, prefix)}")
        keys = [self._key(k) for k in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            with _s3_errors(f"s3://{self.bucket}/{join(self.prefix, prefix)}"):
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
        return len(keys)
