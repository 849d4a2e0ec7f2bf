"""What every pipeline is: two plain functions, no Celery.

``check(ctx)``, if a pipeline has one, validates what is cheap to read (sizes, small metadata)
before any cluster starts. ``load(ctx)`` reads and validates the inputs from ``ctx.inputs``
(the diffusion pipelines open their series' dataset root with ``shared.layouts.open_series``
instead: a BIDS input is one file of a dataset), raising ``InvalidInput`` with a one-line
reason for anything wrong; it needs no cluster, and runs while one starts.
``run(ctx, loaded, client)`` does the chunked work on a ``distributed.Client``; workers write
large outputs straight to ``ctx.out`` (the attempt's prefix) and the pipeline returns what they
wrote, plus the small local files (maps, QC) for the consumer to upload. The consumer's publish
stage uploads those, then writes ``timing.json`` and, last, the manifest. The same two calls
run from a notebook or a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from shared.errors import InvalidInput
from shared.jobspec import JobSpec
from shared.params import PipelineParams
from shared.settings import Settings
from shared.store import ObjectInfo, ObjectStore
from shared.timing import StageTimer

P = TypeVar("P", bound=PipelineParams)


@dataclass
class PipelineContext:
    spec: JobSpec
    inputs: ObjectStore  # rooted at the job's input URI (an HCP subject, a volume, a result)
    out: ObjectStore  # rooted at this attempt's output prefix; nothing here is visible yet
    timer: StageTimer
    settings: Settings
    workdir: Path  # local scratch, removed when the job ends

    def params(self, model: type[P]) -> P:
        """The job's parameters as the pipeline's own model (a spec routed to the wrong
        pipeline is bad input, not a crash)."""
        params = self.spec.parameters()
        if not isinstance(params, model):
            raise InvalidInput(f"{self.spec.pipeline} job given {type(params).__name__} parameters")
        return params


@dataclass
class PipelineResult:
    #: Objects already in ``ctx.out`` (written by Dask workers straight to the store).
    files: list[ObjectInfo] = field(default_factory=list)
    #: Local files the consumer uploads in its ``publish`` stage: key below ``ctx.out`` -> path.
    uploads: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    #: The input objects the job read, for the manifest's provenance (``shared.provenance``).
    inputs: dict[str, Any] = field(default_factory=dict)


class Pipeline(NamedTuple):
    load: Callable[[PipelineContext], Any]
    run: Callable[[PipelineContext, Any, Any], PipelineResult]
    #: Imported on every Dask worker while the cluster starts, off the job's critical path.
    worker_modules: tuple[str, ...] = ()
    #: Cheap validation (object sizes, small metadata, parameters against the input) that runs
    #: before any cluster starts, so the commonest bad inputs cost no cluster at all.
    check: Callable[[PipelineContext], None] | None = None
