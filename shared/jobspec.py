"""The job schema: one JobSpec, serialised as JSON, is the whole contract between producer and
consumer. Every pipeline's parameters are typed here so the CLI rejects bad values before
anything is enqueued, and so that a job key can be computed without importing any pipeline.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import InvalidInput
from shared.store import split_uri

SCHEMA_VERSION = 1
# Ids become object-key components: no separators, no dots at the start, nothing exotic.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)
CLUSTER_PATTERN = r"^(local(:[1-9][0-9]{0,2})?|(tcp|tls)://[A-Za-z0-9_.\-]+:[0-9]{1,5})$"


class PipelineParams(BaseModel):
    """Base of every pipeline's parameter model. ``version`` enters the job key: bump it when a
    change alters a pipeline's output, so campaigns re-run instead of skipping."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: ClassVar[str] = "1"


class DtiParams(PipelineParams):
    """Tensor fit (FA and MD maps) of an HCP-layout subject."""

    version: ClassVar[str] = "1"
    fit_method: Literal["WLS", "OLS", "NLLS"] = Field(
        default="WLS", description="dipy TensorModel fit method (weighted least squares default)."
    )
    b0_threshold: float = Field(default=50.0, ge=0, le=1000, description="b-values <= are b0.")
    chunks: int | None = Field(
        default=None, ge=1, le=4096, description="Chunks of mask voxels; None = 4 per worker."
    )
    qc: bool = Field(default=True, description="Write the FA mid-slice QC PNG.")


PIPELINE_PARAMS: dict[str, type[PipelineParams]] = {"dti": DtiParams}
PipelineName = Literal["dti"]


def check_id(value: str, what: str) -> str:
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe id (letters, digits, '_', '-', '.')")
    return value


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line a user can act on."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "job"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class JobSpec(BaseModel):
    """One unit of work: a pipeline over one subject or volume."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    campaign: str | None = Field(default=None, pattern=ID_PATTERN)
    pipeline: PipelineName
    input_uri: str = Field(min_length=1, max_length=1024)
    results_uri: str = Field(min_length=1, max_length=1024)
    subject: str = Field(default="", description="Derived from the input URI when empty.")
    params: dict[str, Any] = Field(default_factory=dict)
    cluster: str | None = Field(default=None, pattern=CLUSTER_PATTERN)
    submitted_at: float = Field(default_factory=time.time)

    @field_validator("input_uri", "results_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if any(part == ".." for part in value.replace("\\", "/").split("/")):
            raise ValueError(f"URI {value!r} contains '..'")
        if not value.startswith(("s3://", "file://", "/", "./")) and "://" in value:
            raise ValueError(f"URI {value!r}: use s3://bucket/prefix or a path")
        return value.rstrip("/") or value

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if not data.get("subject") and isinstance(data.get("input_uri"), str):
            data["subject"] = split_uri(data["input_uri"])[1]
        pipeline = data.get("pipeline")
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

    def parameters(self) -> PipelineParams:
        return PIPELINE_PARAMS[self.pipeline].model_validate(self.params)

    @property
    def pipeline_version(self) -> str:
        return PIPELINE_PARAMS[self.pipeline].version

    @property
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
                "params": self.params,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def result_prefix(self) -> str:
        """Where this job's results live below ``results_uri``; new parameters, new prefix."""
        return f"{self.subject}/{self.pipeline}/{self.key[:16]}"

    def to_message(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_message(cls, payload: Any) -> JobSpec:
        """Validate a decoded message; any problem is a permanent ``InvalidInput``."""
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(f"invalid job: {describe(exc)}") from None
