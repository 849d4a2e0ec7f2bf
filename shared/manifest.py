"""The manifest: the one object that makes a result exist. Written last, conditionally."""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidInput
from shared.jobspec import JobSpec
from shared.store import ObjectInfo, ObjectStore

MANIFEST = "manifest.json"


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    job_key: str
    job_id: str
    pipeline: str
    pipeline_version: str
    subject: str
    input_uri: str
    params: dict[str, Any]
    attempt: str = Field(description="The run whose files this lists; others are orphans.")
    committed_at: float = Field(default_factory=time.time)
    files: list[dict[str, Any]]
    summary: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="Software, input objects, every parameter (defaults too), host and cluster "
        "(shared.provenance); empty in manifests older than it.",
    )

    @classmethod
    def for_job(
        cls,
        spec: JobSpec,
        attempt: str,
        files: list[ObjectInfo],
        summary: dict[str, Any],
        provenance: dict[str, Any] | None = None,
    ) -> Manifest:
        return cls(
            job_key=spec.key,
            job_id=spec.job_id,
            pipeline=spec.pipeline,
            pipeline_version=spec.pipeline_version,
            subject=spec.subject,
            input_uri=spec.input_uri,
            params=spec.params,
            attempt=attempt,
            files=[f.as_dict() for f in files],
            summary=summary,
            provenance=provenance or {},
        )

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode()


def read_manifest(store: ObjectStore, prefix: str) -> Manifest | None:
    """The committed manifest below ``prefix``, or None when the job has not committed."""
    key = f"{prefix}/{MANIFEST}"
    if not store.exists(key):
        return None
    try:
        return Manifest.model_validate_json(store.get_bytes(key))
    except ValidationError as exc:
        raise InvalidInput(
            f"corrupt manifest at {store.uri_for(key)}: {exc.error_count()} errors"
        ) from None
