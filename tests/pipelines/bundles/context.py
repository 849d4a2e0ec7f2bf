"""A pipeline context over local stores, for calling a pipeline's stages directly."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from consumers.pipelines.base import PipelineContext
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import LocalStore
from shared.timing import StageTimer


def make_ctx(
    tmp_path: Path, input_uri: str, params: dict[str, Any], pipeline: str = "bundles"
) -> PipelineContext:
    spec = JobSpec(
        pipeline=pipeline,
        input_uri=input_uri,
        results_uri=str(tmp_path / "out"),
        params=params,
    )
    return PipelineContext(
        spec=spec,
        inputs=LocalStore(Path(input_uri)),
        out=LocalStore(tmp_path / "out" / "attempt"),
        timer=StageTimer(),
        settings=Settings(),
        workdir=tmp_path / f"work-{uuid.uuid4().hex[:6]}",
    )
