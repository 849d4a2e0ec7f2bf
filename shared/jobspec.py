"""The job schema: one JobSpec, serialised as JSON, is the whole contract between producer and
consumer. The pipelines' parameters are typed in shared.params, the checks of user values in
shared.checks.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.checks import ID_PATTERN, check_id, check_uri, describe, shown
from shared.errors import InvalidInput
from shared.params import MANIFEST_NAME, PIPELINE_PARAMS, PipelineName, PipelineParams

SCHEMA_VERSION = 1
CLUSTER_PATTERN = (
    r"^(local(:[1-9][0-9]{0,2})?|coiled|slurm|(tcp|tls)://[A-Za-z0-9_.\-]+:[0-9]{1,5})$"
)
_CLUSTER_RE = re.compile(CLUSTER_PATTERN)

#: The Celery task every job message names: the contract between producer and consumer, here so
#: that the producer can publish without building the consumer's Celery app.
TASK_NAME = "voxfleet.run_job"


class ClusterSize(BaseModel):
    """How big a cluster the job wants; None means the backend's default (one worker per core
    locally, ``coiled_workers`` on Coiled). Not part of the job key: hardware is not science."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workers: int | None = Field(default=None, ge=1, le=1000)
    threads: int = Field(default=1, ge=1, le=64, description="Threads per worker process.")
    memory: str | None = Field(
        default=None, pattern=r"^[0-9]+(\.[0-9]+)? ?(GiB|GB|MiB|MB)$", description="Per worker."
    )
    adaptive_max: int | None = Field(
        default=None, ge=1, le=1000, description="Scale between workers and this, if supported."
    )


def result_prefix(pipeline: str, subject: str, key: str) -> str:
    """Where a job's results live below its ``results_uri`` (``JobSpec.result_prefix``), from
    what a campaign's index keeps of it."""
    return f"{subject}/{pipeline}/{key[:16]}"


class JobSpec(BaseModel):
    """One unit of work: a pipeline over one subject or volume."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = 1
    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    campaign: str | None = Field(default=None, pattern=ID_PATTERN)
    pipeline: PipelineName
    input_uri: str = Field(min_length=1, max_length=1024)
    results_uri: str = Field(min_length=1, max_length=1024)
    subject: str = Field(default="", description="Derived from the input URI when empty.")
    params: dict[str, Any] = Field(default_factory=dict)
    cluster: str | None = Field(default=None, max_length=300)
    resources: ClusterSize = Field(default_factory=ClusterSize)
    submitted_at: float = Field(default_factory=time.time, ge=0)

    @field_validator("input_uri", "results_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_uri(value)

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        pipeline = data.get("pipeline")
        kind = PIPELINE_PARAMS.get(pipeline, PipelineParams) if isinstance(pipeline, str) else None
        if isinstance(data.get("input_uri"), str):
            kind = kind or PipelineParams
            uri = data["input_uri"].rstrip("/")
            if kind.input_marker == MANIFEST_NAME:
                # The folder, not its manifest: one job key however the result was named.
                data["input_uri"] = uri = uri.removesuffix(f"/{MANIFEST_NAME}")
            if not data.get("subject"):
                data["subject"] = kind.subject_of(uri)
        if isinstance(pipeline, str) and pipeline in PIPELINE_PARAMS:
            params = data.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("params must be an object")
            # Normalise to the full typed parameter set, so that defaults enter the job key
            # explicitly and an unknown or mistyped parameter fails here, not in a worker.
            data["params"] = (
                PIPELINE_PARAMS[pipeline].model_validate(params).model_dump(mode="json")
            )
        return data

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_id(value, "subject id")

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        if value is not None and not _CLUSTER_RE.match(value):
            raise ValueError(
                f"{shown(value)} is not a cluster spec "
                "(local, local:N, coiled, slurm, tcp://host:port, tls://host:port)"
            )
        return value

    def parameters(self) -> PipelineParams:
        return PIPELINE_PARAMS[self.pipeline].model_validate(self.params)

    @property
    def pipeline_version(self) -> str:
        return PIPELINE_PARAMS[self.pipeline].version

    @cached_property
    def key(self) -> str:
        """Digest of what determines the output: pipeline and its version, input, parameters.

        Not the job id, campaign, cluster or results location: the same work enqueued twice,
        or on other hardware, has the same key and is recognised as already committed.
        """
        canonical = json.dumps(
            {
                "pipeline": self.pipeline,
                "version": self.pipeline_version,
                "input": self.input_uri,
                "params": {
                    k: v
                    for k, v in self.params.items()
                    if k not in PIPELINE_PARAMS[self.pipeline].key_excludes
                },
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def result_prefix(self) -> str:
        """Where this job's results live below ``results_uri``; new parameters, new prefix."""
        return result_prefix(self.pipeline, self.subject, self.key)

    def to_message(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_message(cls, payload: Any) -> JobSpec:
        """Validate a decoded message; any problem is a permanent ``InvalidInput``."""
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(f"invalid job: {describe(exc)}") from None
