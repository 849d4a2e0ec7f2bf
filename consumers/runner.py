"""Running one job, with no Celery in sight: skip if committed, load, acquire, run, publish.

``consumers.tasks`` wraps this in a Celery task and decides about retries and job state; the
same call runs a job from a test or a notebook.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster
from consumers.derivatives import export
from consumers.pipelines import get_pipeline
from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.publish import publish, remove_orphans, upload_all
from shared import provenance
from shared.jobspec import JobSpec
from shared.manifest import MANIFEST, read_manifest
from shared.settings import Settings
from shared.store import ObjectInfo, ObjectStore, open_store
from shared.timing import StageTimer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    # "done": this run committed; "skipped": a manifest with this key existed already;
    # "superseded": another attempt committed while this one ran (it lost the conditional put)
    state: str
    manifest_uri: str
    timing: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    orphans_removed: int = 0  # objects of dead attempts deleted after the commit
    derivatives: list[str] = field(default_factory=list)  # BIDS-Derivatives keys of a BIDS job


def execute(
    spec: JobSpec,
    settings: Settings,
    *,
    check: Callable[[str], None] | None = None,
    consumer: str | None = None,
    pool: cluster.WarmPool | None = None,
) -> Outcome:
    """Run ``spec`` to a committed manifest; raises the error tree's classes on failure."""
    started = time.time()
    results = open_store(spec.results_uri, settings)
    job_store = results.child(spec.result_prefix)
    existing = read_manifest(results, spec.result_prefix)
    if existing is not None:
        log.info("job %s already committed as %s", spec.job_id, existing.job_id)
        orphans = _remove_orphans(job_store, existing.attempt)
        # Again: the export that followed the commit may have failed (this is its retry).
        exported = export(results, existing)
        return Outcome(
            "skipped",
            job_store.uri_for(MANIFEST),
            summary=existing.summary,
            orphans_removed=orphans,
            derivatives=exported,
        )

    timer = StageTimer(deadline=started + settings.job_time_limit_s, check=check)
    timer.record("queue_wait", started - spec.submitted_at)
    attempt = uuid.uuid4().hex[:12]
    get_pipeline(spec.pipeline)  # an unknown pipeline fails before anything is written
    cluster_spec = spec.cluster or settings.default_cluster
    try:
        result, uploaded = _compute(spec, settings, timer, job_store, attempt, cluster_spec, pool)
    except BaseException:
        # Whatever this attempt wrote is an orphan no manifest will name; remove it now rather
        # than leave it for a sweep (best effort: the store may be what failed).
        with contextlib.suppress(Exception):
            job_store.delete_prefix(attempt)
        raise
    timer.extra.update(
        job_id=spec.job_id,
        job_key=spec.key,
        pipeline=spec.pipeline,
        subject=spec.subject,
        attempt=attempt,
        cluster_spec=cluster_spec,
        consumer=consumer or socket.gethostname(),
        finished_at=time.time(),
    )
    # The last boundary before anything becomes visible: a cancelled job, or an attempt whose
    # lease another attempt took over, stops here (and its files go with it).
    try:
        timer.boundary("commit")
    except BaseException:
        with contextlib.suppress(Exception):
            job_store.delete_prefix(attempt)
        raise
    t0 = time.perf_counter()
    timing = timer.as_dict()
    # timing.json cannot contain the time it takes to write itself and the manifest; that
    # remainder ("commit") is in the job record's final timing instead.
    files = [*result.files, *uploaded]
    origin = {
        "software": provenance.software(settings),
        "inputs": result.inputs,
        "parameters": spec.parameters().model_dump(mode="json"),  # the defaults too
        "host": {k: timing.get(k) for k in ("consumer", "cluster_spec", "cluster")},
    }
    publication = publish(results, spec, attempt, files, result.summary, timing, origin)
    timer.record("commit", time.perf_counter() - t0)
    orphans = _remove_orphans(job_store, publication.manifest.attempt)
    state = "done" if publication.committed else "superseded"
    if not publication.committed:
        log.warning("job %s lost the commit race; kept the existing manifest", spec.job_id)
    # After the commit, which stays the only thing that makes a result exist: an export that
    # fails raises, and the job's retry finds the manifest and exports again ("skipped").
    t0 = time.perf_counter()
    exported = export(results, publication.manifest)
    timer.record("export", time.perf_counter() - t0)
    return Outcome(
        state, publication.manifest_uri, timer.as_dict(), result.summary, orphans, exported
    )


def _remove_orphans(job_store: ObjectStore, committed_attempt: str) -> int:
    """Best effort: a failure here leaves garbage no reader trusts, never a wrong result."""
    try:
        return remove_orphans(job_store, committed_attempt)
    except Exception as exc:
        log.warning("could not remove orphaned attempts below %s: %s", job_store.uri, exc)
        return 0


def _compute(
    spec: JobSpec,
    settings: Settings,
    timer: StageTimer,
    job_store: ObjectStore,
    attempt: str,
    cluster_spec: str,
    pool: cluster.WarmPool | None,
) -> tuple[PipelineResult, list[ObjectInfo]]:
    """Load, compute and upload one attempt's outputs below ``{job}/{attempt}/``."""
    pipeline = get_pipeline(spec.pipeline)
    with tempfile.TemporaryDirectory(prefix="voxfleet-") as scratch:
        ctx = PipelineContext(
            spec=spec,
            inputs=open_store(spec.input_uri, settings),
            out=job_store.child(attempt),
            timer=timer,
            settings=settings,
            workdir=Path(scratch),
        )
        # What is cheap to check is checked before any cluster exists (most bad inputs stop
        # here). Then the cluster starts while the inputs download and validate: an input that
        # is bad only inside its voxels costs a cluster start that is torn down at once; that
        # is the price of not adding the start-up to every good job.
        if pipeline.check is not None:
            with timer.stage("check"):
                pipeline.check(ctx)
        labels = {
            "job_key": spec.key,
            "job": spec.job_id,
            "campaign": spec.campaign or "",
            "pipeline": spec.pipeline,
        }
        with cluster.starting(
            cluster_spec,
            settings,
            timer,
            warm_modules=pipeline.worker_modules,
            size=spec.resources,
            labels=labels,
            # Only jobs of one campaign share a kept cluster.
            pool=pool if spec.campaign else None,
            pool_key=spec.campaign,
        ) as pending:
            loaded = pipeline.load(ctx)
            timer.boundary("cluster")
            result = pipeline.run(ctx, loaded, pending.client())
        # The cluster is gone; the consumer uploads its own small outputs (they live in the
        # scratch folder, so inside this block).
        with timer.stage("publish"):
            uploaded = upload_all(ctx.out, result.uploads)
    return result, uploaded
