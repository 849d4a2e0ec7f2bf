"""Campaigns: many jobs of one pipeline, submitted, watched, retried and cancelled as one.

The campaign record and its job index live in Redis (``consumers.ledger``); a copy of the plan
lives in the results store (``_campaigns/NAME.json``), so that status can be rebuilt from the
store -- where a manifest is the truth -- even after Redis has lost everything.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from consumers.ledger import FINAL_STATES, Ledger
from producer.bulk import publish_bulk, queue_list
from producer.inputs import input_rows
from producer.jobs import ledger_for
from shared.chain import steps
from shared.checks import check_id, describe
from shared.errors import InvalidInput
from shared.jobspec import JobSpec, result_prefix
from shared.manifest import MANIFEST
from shared.params import PIPELINE_PARAMS
from shared.settings import Settings
from shared.store import ObjectStore, open_store

PLANS = "_campaigns"
HEAD_THREADS = 32
MAX_REPORTED_PROBLEMS = 20


class PlanError(InvalidInput):
    """Some inputs are bad; nothing was enqueued. ``problems`` has one line per bad row."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}; nothing was enqueued")
        self.problems = problems


@dataclass
class Plan:
    name: str
    pipeline: str
    params: dict[str, Any]
    results_uri: str
    source: str
    queue: str
    priority: int
    to_enqueue: list[JobSpec]
    skipped: list[JobSpec]  # already committed, or already queued/running in this campaign
    found_by: str = "manifest"  # see producer.inputs.Inputs
    unusable: list[str] = field(default_factory=list)  # listed series left out, one line each

    @property
    def all_jobs(self) -> list[JobSpec]:
        return [*self.skipped, *self.to_enqueue]


def committed(store: ObjectStore, specs: list[JobSpec]) -> set[str]:
    """Keys of the specs whose manifest exists, and those of every step that follows them
    (``shared.chain``), HEADs in parallel. A job whose later steps have not all committed is
    not done: enqueued again, its committed steps are skipped in seconds (no cluster starts)
    and each enqueues the next, so a chain resumes at its first missing step."""

    def done(spec: JobSpec) -> bool:
        return all(store.exists(f"{s.result_prefix}/{MANIFEST}") for s in steps(spec))

    with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
        found = pool.map(done, specs)
        return {spec.key for spec, ok in zip(specs, found, strict=True) if ok}


def plan_campaign(
    name: str,
    pipeline: str,
    source: str,
    results_uri: str,
    params: dict[str, Any],
    settings: Settings,
    *,
    marker: str | None = None,
    layout: str | None = None,
    only_missing: bool = False,
    queue: str | None = None,
    priority: int = 0,
    cluster: str | None = None,
) -> Plan:
    """Validate everything and decide what to enqueue; touches nothing."""
    try:
        check_id(name, "campaign name")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if pipeline not in PIPELINE_PARAMS:
        raise InvalidInput(f"unknown pipeline {pipeline!r} (have: {', '.join(PIPELINE_PARAMS)})")
    settings.check_results(results_uri)
    inputs = input_rows(source, pipeline, settings, marker=marker, layout=layout)
    specs: list[JobSpec] = []
    problems: list[str] = []
    unusable: list[str] = []
    seen: dict[str, str] = {}
    for row in inputs.rows:
        where = f"line {row.line}" if row.line else row.input_uri
        if row.problem and not inputs.from_manifest:
            unusable.append(row.problem)  # a listed series that cannot run: it names itself
            continue
        if row.problem:
            problems.append(f"{where}: {row.problem}")
            continue
        try:
            spec = JobSpec(
                pipeline=pipeline,  # checked above
                input_uri=row.input_uri,
                results_uri=results_uri,
                subject=row.subject,
                params={**params, **row.params},
                campaign=name,
                cluster=cluster,
            )
        except ValidationError as exc:
            problems.append(f"{where}: {describe(exc)}")
            continue
        if spec.key in seen:
            problems.append(f"{where}: the same job as {seen[spec.key]}")
            continue
        seen[spec.key] = where
        specs.append(spec)
    if problems:
        raise PlanError(problems)

    skip: set[str] = set()
    if only_missing:
        skip |= committed(open_store(results_uri, settings), specs)
        skip |= in_flight_keys(ledger_for(settings), name)
    return Plan(
        name=name,
        pipeline=pipeline,
        params=params,
        results_uri=results_uri,
        source=source,
        queue=queue or settings.queue,
        priority=priority,
        to_enqueue=[s for s in specs if s.key not in skip],
        skipped=[s for s in specs if s.key in skip],
        found_by=inputs.found_by,
        unusable=unusable,
    )


def in_flight_keys(ledger: Ledger, name: str) -> set[str]:
    """Job keys of this campaign that are queued, running or retrying right now."""
    index = ledger.campaign_jobs(name)
    records = ledger.states(list(index))
    return {
        key
        for job_id, (_, key) in index.items()
        if records[job_id].get("state", "queued") not in FINAL_STATES
    }


def submit_campaign(
    plan: Plan, settings: Settings, progress: Callable[[int], None] | None = None
) -> int:
    ledger = ledger_for(settings)
    existing = ledger.campaign(plan.name)
    if existing is not None and existing.get("pipeline") != plan.pipeline:
        raise InvalidInput(f"campaign {plan.name!r} exists with pipeline {existing['pipeline']!r}")
    plan_doc = {
        "name": plan.name,
        "pipeline": plan.pipeline,
        "params": plan.params,
        "results_uri": plan.results_uri,
        "source": plan.source,
        "found_by": plan.found_by,
        "unusable": plan.unusable,
        "jobs": [
            {
                "subject": s.subject,
                "input_uri": s.input_uri,
                "key": s.key,
                "prefix": s.result_prefix,
            }
            for s in plan.all_jobs
        ],
    }
    # The plan goes to the store first: status can always be rebuilt from it.
    open_store(plan.results_uri, settings).put_bytes(
        f"{PLANS}/{plan.name}.json", json.dumps(plan_doc).encode()
    )
    ledger.save_campaign(
        plan.name,
        {
            "pipeline": plan.pipeline,
            "params": plan.params,
            "results_uri": plan.results_uri,
            "source": plan.source,
            "queue": plan.queue,
            "priority": plan.priority,
            "status": "active",
            "created_at": existing["created_at"] if existing else time.time(),
            "total": len(plan.all_jobs),
        },
    )
    return publish_bulk(
        plan.to_enqueue,
        settings,
        campaign=plan.name,
        queue=plan.queue,
        priority=plan.priority,
        progress=progress,
    )


@dataclass
class JobView:
    job_id: str
    subject: str
    key: str
    state: str
    reason: str = ""
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class CampaignStatus:
    name: str
    source: str  # "redis" or "store" (Redis had no record: rebuilt from the plan and manifests)
    record: dict[str, Any]
    jobs: list[JobView]

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(job.state for job in self.jobs))

    def throughput_per_h(self, now: float | None = None) -> float | None:
        done = [float(j.record["updated_at"]) for j in self.jobs if j.state == "done" and j.record]
        start = float(self.record.get("created_at", 0) or 0)
        if not done or not start:
            return None
        span = max(done) - start if self.finished else (now or time.time()) - start
        return len(done) / max(span, 1e-9) * 3600

    @property
    def finished(self) -> bool:
        return all(job.state in (*FINAL_STATES, "not committed") for job in self.jobs)

    def eta_s(self) -> float | None:
        rate = self.throughput_per_h()
        remaining = sum(1 for j in self.jobs if j.state not in FINAL_STATES)
        if not rate or not remaining:
            return None
        return remaining / rate * 3600

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.name,
            "source": self.source,
            "status": self.record.get("status", "unknown"),
            "total": len(self.jobs),
            "counts": self.counts,
            "throughput_per_h": self.throughput_per_h(),
            "eta_s": self.eta_s(),
            "failures": [
                {"job_id": j.job_id, "subject": j.subject, "reason": j.reason}
                for j in self.jobs
                if j.state == "failed"
            ],
        }


def campaign_status(
    name: str, settings: Settings, results_uri: str | None = None
) -> CampaignStatus:
    ledger = ledger_for(settings)
    record = ledger.campaign(name)
    if record is None:
        if results_uri is None:
            raise InvalidInput(
                f"no campaign {name!r} in this broker; pass --results URI to rebuild its "
                "status from the store"
            )
        return _status_from_store(name, open_store(results_uri, settings))
    store = open_store(record["results_uri"], settings)
    index = ledger.campaign_jobs(name)
    records = ledger.states(list(index))
    cancelled = record.get("status") == "cancelled"
    jobs = []
    for job_id, (subject, key) in index.items():
        rec = records[job_id]
        state = rec.get("state") or ("cancelled" if cancelled else "queued")
        jobs.append(JobView(job_id, subject, key, state, rec.get("reason", ""), rec))
    # The store is the truth: a job Redis thinks unfinished may have committed (a record lost
    # in a Redis failover, a consumer killed between commit and its state update).
    doubtful = [j for j in jobs if j.state in ("running", "retrying", "failed")]
    with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
        found = pool.map(
            lambda j: store.exists(
                f"{result_prefix(record['pipeline'], j.subject, j.key)}/{MANIFEST}"
            ),
            doubtful,
        )
        for job, ok in zip(doubtful, found, strict=True):
            if ok:
                job.state, job.reason = "done", ""
    return CampaignStatus(name, "redis", record, sorted(jobs, key=lambda j: j.subject))


def _status_from_store(name: str, store: ObjectStore) -> CampaignStatus:
    key = f"{PLANS}/{name}.json"
    if not store.exists(key):
        raise InvalidInput(f"no campaign {name!r} in the broker or at {store.uri_for(key)}")
    plan = json.loads(store.get_bytes(key))
    entries = plan["jobs"]
    with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
        found = list(pool.map(lambda e: store.exists(f"{e['prefix']}/{MANIFEST}"), entries))
    jobs = [
        JobView("", e["subject"], e["key"], "done" if ok else "not committed")
        for e, ok in zip(entries, found, strict=True)
    ]
    record = {k: plan[k] for k in ("pipeline", "params", "results_uri", "source")}
    return CampaignStatus(name, "store", {**record, "status": "unknown"}, jobs)


def retry_campaign(name: str, settings: Settings, *, failed_only: bool = False) -> int:
    """Re-enqueue failed jobs (and, unless ``failed_only``, cancelled ones), under new job ids.

    The old ids leave the campaign index (their records stay for history) so no job counts
    twice; a job whose manifest exists by now is left alone.
    """
    status = campaign_status(name, settings)
    wanted = ("failed",) if failed_only else ("failed", "cancelled")
    again = [j for j in status.jobs if j.state in wanted]
    if not again:
        return 0
    ledger = ledger_for(settings)
    record = status.record
    plan = json.loads(open_store(record["results_uri"], settings).get_bytes(f"{PLANS}/{name}.json"))
    entries = {entry["key"]: entry for entry in plan["jobs"]}
    specs = [
        JobSpec(
            pipeline=plan["pipeline"],
            input_uri=entries[job.key]["input_uri"],
            results_uri=plan["results_uri"],
            subject=entries[job.key]["subject"],
            params=plan["params"],
            campaign=name,
        )
        for job in again
    ]
    ledger.redis.hdel(f"voxfleet:campaign:{name}:jobs", *[j.job_id for j in again])
    if record.get("status") == "cancelled":
        ledger.redis.hset(f"voxfleet:campaign:{name}", "status", "active")
    return publish_bulk(
        specs,
        settings,
        campaign=name,
        queue=record.get("queue"),
        priority=int(record.get("priority", 0)),
    )


def cancel_campaign(name: str, settings: Settings) -> dict[str, int]:
    """Queued jobs are dropped (marked cancelled; consumers skip them, and a campaign's own
    queue is emptied); running jobs stop at their next stage boundary, publishing nothing."""
    ledger = ledger_for(settings)
    record = ledger.campaign(name)
    if record is None:
        raise InvalidInput(f"no campaign {name!r} in this broker")
    ledger.redis.hset(f"voxfleet:campaign:{name}", "status", "cancelled")
    index = ledger.campaign_jobs(name)
    records = ledger.states(list(index))
    queued = [job_id for job_id in index if not records[job_id]]
    for job_id in queued:
        ledger.record(job_id, "cancelled", reason="campaign cancelled", campaign=name)
    purged = 0
    if record.get("queue") and record["queue"] != settings.queue:
        # A campaign with its own queue: drop its messages outright.
        for priority in (0, 3, 6, 9):
            purged += int(ledger.redis.llen(queue_list(record["queue"], priority)))
            ledger.redis.delete(queue_list(record["queue"], priority))
    running = sum(1 for r in records.values() if r.get("state") in ("running", "retrying"))
    return {"queued_cancelled": len(queued), "running_stopping": running, "purged": purged}
