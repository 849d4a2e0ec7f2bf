"""The one settings object. Every default lives here with the reason for it.

Read from ``VOXFLEET_*`` environment variables (and nothing else in voxfleet reads
``os.environ``). AWS credentials are deliberately *not* settings: boto3 reads its own standard
chain (env, profile, instance role), so they never pass through our objects, logs or reports.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.checks import shown
from shared.errors import ConfigError, InvalidInput

GIB = 1024**3
# Bucket names as S3 has allowed them (legacy us-east-1 buckets may hold capitals and '_').
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class S3Source(BaseModel):
    """How to reach one URI prefix (an entry of ``VOXFLEET_S3_SOURCES``).

    Unset fields do not inherit the global endpoint: a public dataset is on AWS even when the
    lab's own results live on a MinIO named by ``VOXFLEET_S3_ENDPOINT_URL``. Credentials are a
    named AWS profile, never keys in settings (the same rule as the default chain, above).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    anonymous: bool = Field(
        default=False, description="Unsigned requests (a public bucket); the source is read-only."
    )
    endpoint_url: str | None = Field(default=None, description="None means AWS S3.")
    region: str | None = Field(default=None, description="None means VOXFLEET_S3_REGION.")
    profile: str | None = Field(
        default=None, description="AWS profile (shared config/credentials files) to sign with."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("endpoint_url must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _unsigned_or_signed(self) -> S3Source:
        if self.anonymous and self.profile is not None:
            raise ValueError("an anonymous source sends unsigned requests: it takes no profile")
        return self


def _source_prefix(key: str) -> str:
    """``s3://bucket[/path]`` without a trailing slash, so that matching is by whole components."""
    if not key.startswith("s3://"):
        raise ValueError(f"source {shown(key)} must start with s3://")
    bucket, *path = key.removeprefix("s3://").rstrip("/").split("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"source {shown(key)} does not name a bucket")
    if any(part in ("", ".", "..") for part in path):
        raise ValueError(f"source {shown(key)} has an empty, '.' or '..' path component")
    return "s3://" + "/".join([bucket, *path])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXFLEET_", extra="ignore", frozen=True)

    # Broker and job-state store. One Redis serves both: fewer moving parts for a fleet.
    broker_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (redis:// or rediss://, may carry a password; kept secret in logs).",
    )
    queue: str = Field(default="voxfleet", description="Default Celery queue name.")

    # Object store.
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint override (MinIO, a test server); None means AWS."
    )
    s3_region: str = Field(default="us-east-1", description="Region for the S3 client.")
    s3_max_attempts: int = Field(
        default=8,
        ge=1,
        description="botocore 'standard' retry attempts per S3 call (5xx, throttling).",
    )
    s3_multipart_threshold: int = Field(
        default=64 * 1024**2, description="Above this size uploads go multipart (parallel parts)."
    )
    # Inputs often sit in public buckets (OpenNeuro, HBN) read without credentials, while
    # results go to the lab's bucket with its own; one endpoint and one chain cannot say both.
    s3_sources: Annotated[dict[str, S3Source], NoDecode] = Field(
        default_factory=dict,
        description="JSON: URI prefix -> S3Source (anonymous, endpoint_url, region, profile); "
        "the longest prefix wins, whole path components; no match = the settings above.",
    )

    # Compute.
    default_cluster: str = Field(
        default="local",
        description="Cluster spec for jobs that do not name one: local, local:N, coiled, tcp://...",
    )
    local_workers: int | None = Field(
        default=None, ge=1, description="Workers of a 'local' cluster; None = one per core."
    )
    local_memory_limit: str = Field(
        default="auto", description="Per-worker memory limit of a local cluster (Dask syntax)."
    )
    # Workers forked from one server that imported the pipeline's stack once per consumer,
    # instead of each spawned worker of each job importing it again (~8 CPU s a worker).
    local_start_method: Literal["forkserver", "spawn"] = Field(
        default="forkserver",
        description="How a local cluster starts its workers: 'forkserver' (preloaded imports, "
        "paid once per consumer) or 'spawn' (Dask's default: a fresh interpreter per worker).",
    )
    scheduler_connect_timeout_s: float = Field(
        default=30.0, gt=0, description="Connecting to an existing scheduler; then retried."
    )

    # Warm reuse: keep a consumer's cluster between jobs of one campaign (start-up paid once).
    keep_warm: bool = Field(
        default=False, description="Reuse the cluster for the next job of the same campaign."
    )
    warm_idle_s: float = Field(
        default=300.0, gt=0, description="A kept cluster idle this long is torn down."
    )

    # Coiled (the `coiled` cluster spec; `pip install 'voxfleet[coiled]'`). The token is read by
    # coiled itself from DASK_COILED__TOKEN and never passes through voxfleet.
    coiled_workers: int = Field(default=10, ge=1, description="Workers when the job names none.")
    coiled_vm_types: list[str] = Field(default_factory=list, description="e.g. m6i.xlarge")
    coiled_worker_cpu: int | None = Field(default=None, ge=1)
    coiled_worker_memory: str | None = Field(default=None, description="e.g. '16 GiB'")
    coiled_region: str | None = None
    coiled_spot_policy: str = Field(
        default="spot_with_fallback", description="on-demand | spot | spot_with_fallback"
    )
    coiled_software: str | None = Field(default=None, description="Software environment name.")
    # Backstops if the consumer dies without closing its cluster (SIGKILL, lost VM): Coiled
    # itself shuts the cluster down.
    coiled_idle_timeout: str = "20 minutes"
    coiled_no_client_timeout: str = "10 minutes"
    coiled_cluster_timeout: str = "12 hours"

    # SLURM (the `slurm` cluster spec; `pip install 'voxfleet[slurm]'`).
    slurm_workers: int = Field(default=4, ge=1, description="Worker jobs when the job names none.")
    slurm_queue: str | None = Field(default=None, description="Partition.")
    slurm_account: str | None = None
    slurm_walltime: str = "02:00:00"
    slurm_memory: str = "16GB"
    slurm_job_extra: list[str] = Field(default_factory=list, description="Extra #SBATCH lines.")
    slurm_queue_wait_s: float = Field(
        default=3600.0, gt=0, description="How long to wait for the first worker job to start."
    )

    # Reliability. Redis redelivers an unacked message once it is older than the visibility
    # timeout (celery#5935), so it should exceed the longest job, with margin; a job that runs
    # longer anyway is protected by its lease and the conditional commit (docs/reliability.md).
    # Fault tests set it to seconds to see redeliveries happen.
    visibility_timeout_s: int = Field(default=12 * 3600, ge=1)
    unacked_restore_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often each consumer looks for unacked messages older than the "
        "visibility timeout (a consumer SIGKILLed mid-job is noticed at most this late).",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="A running job's lease in Redis expires this long after its consumer's last "
        "heartbeat (every third of it); until then a redelivered copy waits instead of running.",
    )
    redelivery_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often a consumer looks for unacked messages whose job's lease is dead "
        "(its consumer was killed) and puts them back on their queue: a killed consumer's job "
        "runs again within about lease_ttl_s plus this, whatever the visibility timeout.",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        le=100,
        description="A job whose consumer died this many times while running it (the OOM "
        "killer, typically) is failed and dead-lettered at its next delivery.",
    )
    job_time_limit_s: int = Field(
        default=8 * 3600, ge=10, description="A job is failed past this; kept < visibility timeout."
    )
    soft_shutdown_s: float = Field(
        default=20.0,
        ge=0,
        description="On SIGTERM, how long a consumer lets its job finish before it requeues the "
        "job and exits: within Kubernetes' default 30 s grace, leaving 10 s to clean up.",
    )
    max_retries: int = Field(default=5, ge=0, description="Retries of a transient failure.")
    # Liveness without Celery's remote control (a solo consumer answers none while it runs a
    # job): `voxfleet worker` rewrites this file, `voxfleet health` checks its age. The image
    # sets it; None (bare metal default) writes nothing.
    heartbeat_file: str | None = Field(
        default=None, description="Consumer heartbeat file (JSON); None disables it."
    )
    # Provenance (shared/provenance.py): the image bakes in its commit at build time; its
    # digest, which an image cannot know about itself, is set by whoever pins it by digest.
    git_commit: str | None = Field(
        default=None, description="voxfleet's commit, recorded in manifests (else git's)."
    )
    image_digest: str | None = Field(
        default=None, description="The container image's digest, recorded in manifests."
    )
    heartbeat_interval_s: float = Field(
        default=15.0, gt=0, description="Heartbeat period; stale after 3 periods."
    )
    retry_backoff_s: float = Field(default=5.0, gt=0, description="First retry delay; doubles.")
    retry_backoff_max_s: float = Field(default=600.0, gt=0)
    state_ttl_s: int = Field(
        default=90 * 24 * 3600,
        description="How long job records stay in Redis (campaigns are long).",
    )

    # Input limits: a hostile or mistaken input must fail cleanly, not exhaust a worker.
    max_input_bytes: int = Field(default=16 * GIB, description="Largest single input object.")
    max_voxels: int = Field(
        default=2048**3 // 2, description="Largest volume (product of the spatial dims)."
    )
    max_volumes: int = Field(default=1024, description="Most DWI volumes (4th dimension).")
    max_nonfinite_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Isolated NaN/inf DWI samples are zeroed like dropouts; more than this "
        "fraction of the brain's samples means broken data, and the job fails.",
    )

    @field_validator("s3_sources", mode="before")
    @classmethod
    def _sources_json(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None

    @field_validator("s3_sources")
    @classmethod
    def _sources_prefixes(cls, value: dict[str, S3Source]) -> dict[str, S3Source]:
        sources: dict[str, S3Source] = {}
        for key, source in value.items():
            prefix = _source_prefix(key)
            if prefix in sources:
                raise ValueError(f"source {shown(key)} is given twice")
            sources[prefix] = source
        return sources

    def s3_source(self, uri: str) -> S3Source:
        """How to reach ``uri``: the longest ``s3_sources`` prefix it lies under (whole path
        components: ``s3://open`` is not a prefix of ``s3://openneuro.org``), or else the global
        endpoint and region with the default credential chain."""
        uri = uri.rstrip("/")
        matches = [p for p in self.s3_sources if uri == p or uri.startswith(p + "/")]
        if not matches:  # the global endpoint was never held to a source's checks
            return S3Source.model_construct(
                endpoint_url=self.s3_endpoint_url, region=self.s3_region
            )
        source = self.s3_sources[max(matches, key=len)]
        return source if source.region else source.model_copy(update={"region": self.s3_region})

    def check_results(self, uri: str) -> None:
        """Refuse a results location under an anonymous source before anything is enqueued:
        unsigned requests only read, so every job would fail at its first write."""
        if uri.startswith("s3://") and self.s3_source(uri).anonymous:
            raise InvalidInput(
                f"--results {uri} lies under an anonymous (read-only) source in "
                "VOXFLEET_S3_SOURCES; results need a bucket voxfleet can write"
            )


def redacted(url: str) -> str:
    """``url`` fit to print: any password replaced by ``***`` (the user name stays, it is how
    an operator tells ACL users apart)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def read_settings() -> Settings:
    """Settings from the environment; a bad value is one ``ConfigError`` line naming its
    variable (pydantic's own report spans lines, and would reach a log as several)."""
    try:
        return Settings()
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:3]:
            field, *inner = err["loc"] or ("settings",)
            where = f"VOXFLEET_{str(field).upper()}" + "".join(f"[{p!r}]" for p in inner)
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        more = len(exc.errors()) - 3
        raise ConfigError("; ".join(parts) + (f" (+{more} more)" if more > 0 else "")) from None


_active: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment once.

    Library code takes a ``Settings`` argument; only process entry points (the consumer task,
    the CLI) call this. Tests build ``Settings(...)`` directly.
    """
    global _active
    if _active is None:
        _active = read_settings()
    return _active


def use_settings(settings: Settings) -> None:
    """Install explicit settings for this process (``voxfleet worker --cluster ...``)."""
    global _active
    _active = settings
