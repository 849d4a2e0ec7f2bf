"""The job lease against a real Redis: one holder, heartbeat, takeover noticed, safe release."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from consumers.lease import Lease, LeaseLost
from producer.server import EmbeddedRedis


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


def test_one_holder_and_a_release_that_only_frees_its_own(client: redis.Redis) -> None:
    key = uuid.uuid4().hex
    first, second = Lease(client, key, "a", 30), Lease(client, key, "b", 30)
    assert first.acquire() and not second.acquire()
    assert second.holder() == "a"
    second.release()  # not its lease: nothing happens
    assert first.holder() == "a"
    first.release()
    assert first.holder() is None and second.acquire()


def test_heartbeat_keeps_a_lease_alive_past_its_ttl(client: redis.Redis) -> None:
    key = uuid.uuid4().hex
    lease = Lease(client, key, "a", 0.3)
    assert lease.acquire()
    with lease:
        deadline = time.monotonic() + 1.0  # more than three TTLs
        while time.monotonic() < deadline:
            assert lease.holder() == "a"
            time.sleep(0.05)
        lease.check()
    assert lease.holder() is None  # released on exit


def test_an_attempt_whose_lease_was_taken_over_is_told_so(client: redis.Redis) -> None:
    key = uuid.uuid4().hex
    stalled = Lease(client, key, "stalled", 30)
    assert stalled.acquire()
    client.delete(stalled.key)  # it expired while the holder was frozen...
    assert Lease(client, key, "copy", 30).acquire()  # ...and a redelivered copy took it
    with pytest.raises(LeaseLost, match="copy"):
        stalled.check()


def test_an_expired_unclaimed_lease_is_taken_back(client: redis.Redis) -> None:
    key = uuid.uuid4().hex
    lease = Lease(client, key, "a", 30)
    assert lease.acquire()
    client.delete(lease.key)
    lease.check()  # nobody else runs the job: carry on, holding it again
    assert lease.holder() == "a"
