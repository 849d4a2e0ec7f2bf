"""Turning CLI input into JobSpecs, publishing them, and waiting for them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from consumers.app import make_app
from consumers.ledger import FINAL_STATES, Ledger
from shared.errors import InvalidInput
from shared.jobspec import TASK_NAME, JobSpec
from shared.settings import Settings


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are read as JSON when they parse (``8``, ``true``, ``[1,2]``) and
    as strings otherwise, then typed and checked by the pipeline's parameter model."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--param {pair!r}: expected NAME=VALUE")
        try:
            params[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[name.strip()] = raw
    return params


def ledger_for(settings: Settings) -> Ledger:
    return Ledger.from_url(settings.broker_url.get_secret_value(), settings.state_ttl_s)


def submit(specs: list[JobSpec], settings: Settings, *, queue: str | None = None) -> None:
    """Record each job as queued, then publish it (in that order, so a fast consumer's
    ``running`` is never overwritten by a late ``queued``)."""
    ledger = ledger_for(settings)
    app = make_app(settings)
    with app.producer_or_acquire() as producer:
        for spec in specs:
            ledger.record_queued(spec)
            app.send_task(
                TASK_NAME,
                args=[spec.to_message()],
                task_id=spec.job_id,
                queue=queue or settings.queue,
                producer=producer,
            )


def wait_for(
    job_ids: list[str],
    settings: Settings,
    *,
    timeout_s: float | None = None,
    on_update: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    poll_s: float = 0.25,
) -> dict[str, dict[str, Any]]:
    """Poll the ledger until every job is done or failed; returns the final records."""
    ledger = ledger_for(settings)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        records = {job_id: ledger.get(job_id) or {"state": "unknown"} for job_id in job_ids}
        if on_update is not None:
            on_update(records)
        if all(r.get("state") in FINAL_STATES for r in records.values()):
            return records
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)
