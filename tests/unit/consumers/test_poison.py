"""A job whose consumer keeps dying under it is failed, with why, instead of killing the next."""

from __future__ import annotations

import uuid

import pytest
import redis

from consumers import tasks
from consumers.ledger import Ledger
from producer.server import EmbeddedRedis


def test_the_third_death_fails_the_job_and_dead_letters_it(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(redis.Redis.from_url(redis_server.url, decode_responses=True), 60)
    monkeypatch.setattr(tasks, "ledger_for_consumer", lambda: ledger)
    job = uuid.uuid4().hex
    # A first delivery that finished (retrying after a transient error) is not a death.
    ledger.record(job, "retrying", reason="S3 503")
    assert not tasks._poisoned(ledger, job, 3, {"job": job})
    for death in (1, 2, 3):
        ledger.record(job, "running", stage="csd")  # a delivery starts; its consumer dies
        poisoned = tasks._poisoned(ledger, job, 3, {"job": job})
        assert poisoned == (death == 3)
    record = ledger.get(job)
    assert record is not None and record["state"] == "failed" and record["deaths"] == "3"
    assert record["reason"] == (
        "its consumer died 3 times while running it, last at stage csd; likely out of memory: "
        "give it more memory or fewer workers"
    )
    assert ledger.dead_letters(1000)[-1]["job_id"] == job
