"""The one Celery task: validate, run (``consumers.runner``), record state, retry or fail."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from cluster import WarmPool
from consumers.app import TASK_NAME, app
from consumers.ledger import Ledger, one_line
from consumers.runner import execute
from shared.errors import Cancelled, InvalidInput, TransientError, VoxfleetError
from shared.jobspec import JobSpec
from shared.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def ledger_for_consumer() -> Ledger:
    settings = get_settings()
    return Ledger.from_url(settings.broker_url.get_secret_value(), settings.state_ttl_s)


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
    from consumers.pipelines import PIPELINES  # noqa: F401 - builds the registry


def _cancel_check(ledger: Ledger, spec: JobSpec) -> Callable[[str], None] | None:
    """Stop a job of a cancelled campaign at its next stage boundary (one HGET per stage)."""
    if not spec.campaign:
        return None
    campaign = spec.campaign

    def check(stage: str) -> None:
        if ledger.campaign_cancelled(campaign):
            raise Cancelled(f"campaign {campaign} cancelled before stage {stage}")

    return check


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
    ledger.record(
        job_id,
        "running",
        consumer=consumer,
        pipeline=spec.pipeline,
        subject=spec.subject,
        job_key=spec.key,
    )
    try:
        outcome = execute(
            spec,
            settings,
            consumer=consumer,
            check=_cancel_check(ledger, spec),
            pool=warm_pool(),
        )
    except TransientError as exc:
        if self.request.retries >= settings.max_retries:
            _fail(job_id, f"gave up after {self.request.retries} retries: {exc}", payload)
            return "failed"
        ledger.record(job_id, "retrying", reason=one_line(str(exc)))
        raise self.retry(countdown=backoff_s(self.request.retries), exc=exc) from exc
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

    skipped = outcome.state == "skipped"
    ledger.record(
        job_id,
        "done",
        reason="already committed" if skipped else "",
        result=outcome.manifest_uri,
        timing=outcome.timing or None,
        summary=outcome.summary or None,
    )
    return outcome.state
