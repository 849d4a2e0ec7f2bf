"""One error tree. The consumer decides retry-or-fail by class, never by message text."""

from __future__ import annotations


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
