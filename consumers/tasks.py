"""The one Celery task: validate, run (``consumers.runner``), record state, retry or fail."""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import (
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from cluster import WarmPool
from consumers import followup, shutdown
from consumers.app import app
from consumers.lease import Lease, LeaseLost
from consumers.ledger import Ledger, ledger_for_consumer, one_line
from consumers.runner import execute
from shared.errors import Cancelled, InvalidInput, TransientError, VoxfleetError
from shared.jobspec import TASK_NAME, JobSpec
from shared.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def warm_pool() -> WarmPool | None:
    """The consumer's kept cluster, when ``keep_warm`` is on (``voxfleet worker --warm``)."""
    settings = get_settings()
    return WarmPool(settings.warm_idle_s) if settings.keep_warm else None


@worker_shutdown.connect
def _release_warm_cluster(**_: Any) -> None:
    pool = warm_pool()
    if pool is not None:
        pool.close()


@worker_shutting_down.connect
def _bound_the_grace_period(**_: Any) -> None:
    shutdown.arm(get_settings().soft_shutdown_s)


def backoff_s(retries: int) -> float:
    """Exponential backoff with full jitter, so a fleet hit by one S3 outage does not retry in
    lockstep."""
    settings = get_settings()
    cap = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2**retries)
    return random.uniform(cap / 2, cap)


@worker_ready.connect
@worker_process_init.connect
def _warm_imports(**_: Any) -> None:
    # Import the scientific stack once per consumer, not inside the first job's timing.
    from consumers.pipelines import PIPELINES

    for name in PIPELINES:  # the registry is lazy: load each pipeline, and its stack, now
        PIPELINES[name]


def _stage_hook(ledger: Ledger, job_id: str, spec: JobSpec, lease: Lease) -> Callable[[str], None]:
    """Run at every stage boundary: publish the stage, stop if the campaign was cancelled
    (one HGET) or if another attempt took the job's lease over (one EVAL)."""
    campaign = spec.campaign

    def check(stage: str) -> None:
        if campaign and ledger.campaign_cancelled(campaign):
            raise Cancelled(f"campaign {campaign} cancelled before stage {stage}")
        lease.check()  # before the stage is published: a superseded attempt writes nothing
        ledger.stage(job_id, stage)

    return check


def _defer(task: Task, payload: Any, job_id: str, holder: str | None) -> str:
    """Another attempt holds the job's lease (typically: Redis redelivered the message of a
    job that is still running, after the visibility timeout). Running it twice would waste a
    cluster and race the commit; dropping the message would lose the job if that attempt dies.
    So publish the message again for later -- it will find the job committed, or the lease
    expired -- and ack this one."""
    settings = get_settings()
    delay = min(settings.lease_ttl_s, settings.visibility_timeout_s / 4)
    delivery = task.request.delivery_info or {}
    app.send_task(
        TASK_NAME,
        args=[payload],
        task_id=job_id,
        countdown=delay,
        queue=delivery.get("routing_key") or settings.queue,
        retries=task.request.retries,  # a deferral is not a retry of a failure
    )
    ledger_for_consumer().deferred(job_id, holder)
    log.info("job %s deferred %.1f s: its lease is held by %s", job_id, delay, holder)
    return "deferred"


def _fail(job_id: str, reason: str, body: Any) -> None:
    ledger = ledger_for_consumer()
    ledger.record(job_id, "failed", reason=one_line(reason))
    ledger.dead_letter(job_id, reason, json.dumps(body, default=repr))
    log.error("job %s failed: %s", job_id, one_line(reason))


@app.task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Task, *args: Any, **kwargs: Any) -> str:
    settings = get_settings()
    ledger = ledger_for_consumer()
    job_id = str(self.request.id)
    payload = args[0] if len(args) == 1 and not kwargs else {"args": args, "kwargs": kwargs}
    try:
        spec = JobSpec.from_message(payload)
    except InvalidInput as exc:
        _fail(job_id, str(exc), payload)
        return "failed"

    if spec.campaign and (
        ledger.campaign_cancelled(spec.campaign)
        or (ledger.get(job_id) or {}).get("state") == "cancelled"
    ):
        # Dropped, not failed: the message is acked and nothing runs.
        ledger.record(job_id, "cancelled", reason="campaign cancelled before the job started")
        return "cancelled"

    consumer = f"{self.request.hostname}"
    lease = Lease(
        ledger.redis, spec.key, f"{consumer} {uuid.uuid4().hex[:12]}", settings.lease_ttl_s
    )
    ledger.count(job_id, "deliveries", 1)
    if not lease.acquire():
        return _defer(self, payload, job_id, lease.holder())
    with lease:
        if _poisoned(ledger, job_id, settings.max_deliveries, payload):
            return "failed"
        return _run(self, job_id, spec, payload, consumer, lease)


def _poisoned(ledger: Ledger, job_id: str, max_deliveries: int, payload: Any) -> bool:
    """A job whose last delivery started and never finished (its record still says
    ``running``, and the lease is ours now, so that holder is dead): its consumer died under it.
    The OOM killer does that again every time; after ``max_deliveries`` such deaths the job is
    failed and dead-lettered instead of killing consumer after consumer. ``campaign retry``
    brings it back under a new id, on purpose."""
    record = ledger.get(job_id) or {}
    if record.get("state") != "running":
        return False
    deaths = ledger.died(job_id)
    stage = record.get("stage") or "start"
    log.warning("job %s: its consumer died while running it (%d so far)", job_id, deaths)
    if deaths < max_deliveries:
        return False
    _fail(
        job_id,
        f"its consumer died {deaths} times while running it, last at stage {stage}; likely "
        "out of memory: give it more memory or fewer workers",
        payload,
    )
    return True


def _run(task: Task, job_id: str, spec: JobSpec, payload: Any, consumer: str, lease: Lease) -> str:
    """The job under its lease: run it, record the outcome, retry or fail."""
    settings = get_settings()
    ledger = ledger_for_consumer()
    ledger.record(
        job_id,
        "running",
        consumer=consumer,
        pipeline=spec.pipeline,
        subject=spec.subject,
        job_key=spec.key,
        stage="",
    )
    try:
        with shutdown.job_in_progress():
            outcome = execute(
                spec,
                settings,
                consumer=consumer,
                check=_stage_hook(ledger, job_id, spec, lease),
                pool=warm_pool(),
            )
    except shutdown.ShutdownRequested:
        # The attempt's files are gone and its cluster is down; back into the queue at once.
        ledger.record(job_id, "queued", reason="requeued: its consumer shut down mid-job")
        log.warning("job %s requeued: the consumer is shutting down", job_id)
        raise Reject("consumer shutting down", requeue=True) from None
    except LeaseLost as exc:
        # Another delivery took the job over while this one stalled; it records the outcome.
        log.warning("job %s abandoned: %s", job_id, exc)
        ledger.superseded(job_id, "lease lost: stopped at a stage boundary")
        return "superseded"
    except TransientError as exc:
        if task.request.retries >= settings.max_retries:
            _fail(job_id, f"gave up after {task.request.retries} retries: {exc}", payload)
            return "failed"
        ledger.record(job_id, "retrying", reason=one_line(str(exc)))
        # max_retries passed on: Celery's own default (3) would otherwise re-raise on the 4th
        # retry, failing the task behind the job record's back (it stayed "retrying", the
        # message acked: a lost job; found by the S3-outage fault test).
        raise task.retry(
            countdown=backoff_s(task.request.retries), exc=exc, max_retries=settings.max_retries
        ) from exc
    except Cancelled as exc:
        ledger.record(job_id, "cancelled", reason=one_line(str(exc)))
        return "cancelled"
    except VoxfleetError as exc:  # permanent: bad input, refused by S3, time limit, cancelled
        _fail(job_id, str(exc), payload)
        return "failed"
    except Exception as exc:
        # A bug or an unclassified library failure: retrying will not fix it, and a retry loop
        # would hide it. Fail with the exception named; the traceback goes to the log.
        log.exception("job %s crashed", job_id)
        _fail(job_id, f"{type(exc).__name__}: {exc}", payload)
        return "failed"

    if outcome.state == "superseded":
        ledger.superseded(job_id, "lost the conditional commit")
        return outcome.state
    skipped = outcome.state == "skipped"
    # Before "done", so that whoever sees the job done can already find its follow-ups.
    queue = (task.request.delivery_info or {}).get("routing_key") or settings.queue
    chained = followup.enqueue(app, ledger, followup.followups(spec, outcome.manifest_uri), queue)
    ledger.record(
        job_id,
        "done",
        reason="already committed" if skipped else "",
        result=outcome.manifest_uri,
        timing=outcome.timing or None,
        summary=outcome.summary or None,
        followups=chained or None,
    )
    if outcome.orphans_removed:  # summed over deliveries: a later skip must not hide it
        ledger.count(job_id, "orphans_removed", outcome.orphans_removed)
    return outcome.state
