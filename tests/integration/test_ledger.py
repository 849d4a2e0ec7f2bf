"""Job records and dead letters against a real Redis-protocol server."""

from __future__ import annotations

import uuid

import pytest

from consumers.ledger import Ledger, one_line
from producer.server import EmbeddedRedis


@pytest.fixture
def ledger(redis_server: EmbeddedRedis) -> Ledger:
    return Ledger.from_url(redis_server.url, ttl_s=60)


def test_states_attempts_and_json_fields(ledger: Ledger) -> None:
    job = uuid.uuid4().hex
    assert ledger.get(job) is None
    ledger.record(job, "queued", pipeline="dti", spec={"a": 1})
    ledger.record(job, "running")
    ledger.record(job, "retrying", reason="S3 unreachable")
    ledger.record(job, "running")
    ledger.record(job, "done", reason="", timing={"wall_s": 1.5})
    record = ledger.get(job)
    assert record is not None
    assert record["state"] == "done" and record["attempts"] == "2" and record["reason"] == ""
    assert record["spec"] == {"a": 1} and record["timing"] == {"wall_s": 1.5}
    assert 0 < ledger.redis.ttl(f"voxfleet:job:{job}") <= 60
    with pytest.raises(ValueError, match="state"):
        ledger.record(job, "exploded")


def test_dead_letters_keep_the_raw_body(ledger: Ledger) -> None:
    ledger.dead_letter("j1", "bad thing\nwith a traceback", "\x80\x04pickled")
    last = ledger.dead_letters(1)[0]
    assert last == {
        "job_id": "j1",
        "reason": "bad thing",
        "body": "\x80\x04pickled",
        "at": last["at"],
    }


def test_one_line() -> None:
    assert one_line("  first\nsecond") == "first"
    assert len(one_line("x" * 1000)) == 400
