"""Job state in Redis: one hash per job and a dead-letter list.

The producer writes ``queued``; the consumer writes ``running``/``retrying``/``done``/``failed``.
The manifest in the object store stays the truth about results; this is the live view (status,
reasons, timings) and the dead-letter record of every message that could not be run.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import redis

from shared.jobspec import JobSpec
from shared.settings import get_settings

JOB_PREFIX = "voxfleet:job:"
DEAD_LETTERS = "voxfleet:dead"
DEAD_LETTER_CAP = 100_000  # a poison flood must not grow Redis without bound
CAMPAIGN_PREFIX = "voxfleet:campaign:"
STATES = ("queued", "running", "retrying", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")


def one_line(text: str, limit: int = 400) -> str:
    """Reasons are shown in tables and logs: first line only, bounded."""
    first = (text.strip().splitlines() or [""])[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


class Ledger:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, ttl_s: int) -> Ledger:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_s)

    def record(self, job_id: str, state: str, **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        mapping: dict[Any, Any] = {"state": state, "updated_at": repr(time.time())}
        for name, value in fields.items():
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                mapping[name] = json.dumps(value)
            else:
                mapping[name] = str(value)
        key = JOB_PREFIX + job_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=mapping)
        if state == "running":
            pipe.hincrby(key, "attempts", 1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def record_queued(self, spec: JobSpec) -> None:
        """A job about to be published: its state, what it is, and the spec itself."""
        self.record(
            spec.job_id,
            "queued",
            pipeline=spec.pipeline,
            subject=spec.subject,
            input_uri=spec.input_uri,
            results_uri=spec.results_uri,
            job_key=spec.key,
            campaign=spec.campaign,
            spec=spec.to_message(),
        )

    def stage(self, job_id: str, stage: str) -> None:
        """The stage a running job just entered: live progress for status and for watchers."""
        self.redis.hset(
            JOB_PREFIX + job_id, mapping={"stage": stage, "stage_at": repr(time.time())}
        )

    def deferred(self, job_id: str, holder: str | None) -> None:
        """A delivery found the job's lease held by another attempt and put itself off."""
        key = JOB_PREFIX + job_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, "deferrals", 1)
        pipe.hset(key, "deferred_for", holder or "")
        pipe.execute()

    def count(self, job_id: str, name: str, amount: int) -> None:
        self.redis.hincrby(JOB_PREFIX + job_id, name, amount)

    def died(self, job_id: str) -> int:
        """A delivery of the job ended with its consumer's death; how many have so far."""
        return int(self.redis.hincrby(JOB_PREFIX + job_id, "deaths", 1))

    def superseded(self, job_id: str, how: str) -> None:
        """An attempt stood down because another one took the job over (it publishes nothing;
        the other attempt records the outcome)."""
        key = JOB_PREFIX + job_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, "superseded", 1)
        pipe.hset(key, "superseded_how", how)
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw: dict[Any, Any] = self.redis.hgetall(JOB_PREFIX + job_id)
        if not raw:
            return None
        record: dict[str, Any] = dict(raw)
        for name in ("timing", "spec", "summary", "followups"):
            if name in record:
                record[name] = json.loads(record[name])
        return record

    def dead_letter(self, job_id: str | None, reason: str, body: str) -> None:
        """Keep what could not be run, verbatim (never deserialised), with why."""
        entry = {
            "job_id": job_id,
            "reason": one_line(reason),
            "body": body[:65536],
            "at": time.time(),
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(DEAD_LETTERS, json.dumps(entry))
        pipe.ltrim(DEAD_LETTERS, -DEAD_LETTER_CAP, -1)
        pipe.execute()

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(DEAD_LETTERS, -limit, -1)]

    # Campaigns: a record (hash), and its jobs (hash job id -> "subject key"). A campaign job
    # has no job record until a consumer takes it: absent means queued, which keeps a 100k-job
    # submit to one command per batch.

    def campaign(self, name: str) -> dict[str, Any] | None:
        raw: dict[Any, Any] = self.redis.hgetall(CAMPAIGN_PREFIX + name)
        if not raw:
            return None
        record: dict[str, Any] = dict(raw)
        record["params"] = json.loads(record.get("params", "{}"))
        return record

    def save_campaign(self, name: str, fields: dict[str, Any]) -> None:
        mapping: dict[Any, Any] = {
            k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()
        }
        self.redis.hset(CAMPAIGN_PREFIX + name, mapping=mapping)

    def campaign_cancelled(self, name: str) -> bool:
        return bool(self.redis.hget(CAMPAIGN_PREFIX + name, "status") == "cancelled")

    def campaign_jobs(self, name: str) -> dict[str, tuple[str, str]]:
        """job id -> (subject, job key) for every job the campaign enqueued."""
        raw: dict[Any, Any] = self.redis.hgetall(f"{CAMPAIGN_PREFIX}{name}:jobs")
        return {job_id: tuple(value.split(" ", 1)) for job_id, value in raw.items()}

    def states(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Job records for many jobs in one round trip per 5000 (absent -> {})."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(job_ids), 5000):
            batch = job_ids[start : start + 5000]
            pipe = self.redis.pipeline(transaction=False)
            for job_id in batch:
                pipe.hgetall(JOB_PREFIX + job_id)
            for job_id, record in zip(batch, pipe.execute(), strict=True):
                out[job_id] = record
        return out


@lru_cache(maxsize=1)
def ledger_for_consumer() -> Ledger:
    """The consumer process's ledger, on its configured broker."""
    settings = get_settings()
    return Ledger.from_url(settings.broker_url.get_secret_value(), settings.state_ttl_s)
