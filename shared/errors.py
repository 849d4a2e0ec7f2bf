"""One error tree. The consumer decides retry-or-fail by class, never by message text."""

from __future__ import annotations

from pathlib import Path


class VoxfleetError(Exception):
    """Root of every error voxfleet raises on purpose."""


class InvalidInput(VoxfleetError):
    """Permanent: the job can never succeed as submitted (bad spec, bad data). Not retried."""


class MissingInput(InvalidInput):
    """An input object the job needs does not exist."""


class UnsafePath(InvalidInput):
    """A key or id that would escape its prefix (``..``, absolute paths, separators in ids)."""


class PermanentStoreError(VoxfleetError):
    """The object store refused for a reason waiting will not fix (access denied, no bucket)."""


class TransientError(VoxfleetError):
    """Worth retrying with backoff: S3 5xx or throttling, lost connections, a lost cluster."""


class ClusterError(TransientError):
    """A Dask cluster could not be acquired or was lost mid-job."""


class ConfigError(VoxfleetError):
    """Settings or a cluster spec that cannot work; raised before any job runs."""


class Cancelled(VoxfleetError):
    """The job's campaign was cancelled; it stops at the next stage boundary."""


class TimeLimitExceeded(VoxfleetError):
    """The job ran past its time limit; checked at stage boundaries (solo pools have no signals)."""


def one_line_reason(exc: BaseException, path: Path | None = None, key: str = "") -> str:
    """A third-party exception's message as one line of at most 200 characters, to quote in an
    ``InvalidInput``; a scratch ``path`` in it is shown as the object ``key`` it holds."""
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(str(path), key)  # our scratch path means nothing to the user
    return text[:200] if text else type(exc).__name__
