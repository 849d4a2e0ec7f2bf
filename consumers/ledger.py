"""Job state in Redis: one hash per job and a dead-letter list.

The producer writes ``queued``; the consumer writes ``running``/``retrying``/``done``/``failed``.
The manifest in the object store stays the truth about results; this is the live view (status,
reasons, timings) and the dead-letter record of every message that could not be run.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

JOB_PREFIX = "voxfleet:job:"
DEAD_LETTERS = "voxfleet:dead"
DEAD_LETTER_CAP = 100_000  # a poison flood must not grow Redis without bound
STATES = ("queued", "running", "retrying", "done", "failed")
FINAL_STATES = ("done", "failed")


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

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw: dict[Any, Any] = self.redis.hgetall(JOB_PREFIX + job_id)
        if not raw:
            return None
        record: dict[str, Any] = dict(raw)
        for name in ("timing", "spec", "summary"):
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
