"""Which unacked messages the redelivery scan restores, against a real Redis-protocol server and
kombu's own Redis transport: a message is taken (and left unacked) by a kombu consumer, as a
consumer that is then killed leaves it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from consumers.app import make_app
from consumers.lease import LEASE_PREFIX
from consumers.ledger import Ledger
from consumers.redelivery import MUTEX, Redelivery
from producer.server import EmbeddedRedis
from shared.settings import Settings

TTL_S = 5.0


@pytest.fixture
def setup(redis_server: EmbeddedRedis) -> Iterator[tuple[Any, Settings, redis.Redis, str]]:
    queue = f"rd-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        broker_url=redis_server.url,  # type: ignore[arg-type]
        queue=queue,
        lease_ttl_s=TTL_S,
        redelivery_interval_s=1.0,
    )
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.delete("unacked", "unacked_index", MUTEX)
    yield make_app(settings), settings, client, queue
    client.delete("unacked", "unacked_index", MUTEX)


def _held(app: Any, queue: str, job_id: str, eta: str | None = None) -> Any:
    """Publish a job's message and take it without acking it; the open connection is the
    holder (closing it would let kombu restore the message itself)."""
    app.send_task("voxfleet.run_job", args=[{}], task_id=job_id, queue=queue, eta=eta)
    connection = app.connection_for_read()
    simple = connection.SimpleQueue(queue, no_ack=False)
    simple.get(timeout=5)
    return connection, simple


def _scan(app: Any, settings: Settings, client: redis.Redis, now: float) -> list[str]:
    client.delete(MUTEX)  # each call is a scan of its own
    return Redelivery(app, settings).scan(now=now)


def test_a_dead_lease_is_restored_once(setup: tuple[Any, Settings, redis.Redis, str]) -> None:
    app, settings, client, queue = setup
    ledger = Ledger(client, 60)
    job = uuid.uuid4().hex
    ledger.redis.hset(f"voxfleet:job:{job}", mapping={"state": "running", "job_key": "k" * 64})
    connection, simple = _held(app, queue, job)
    try:
        assert client.hlen("unacked") == 1 and client.llen(queue) == 0
        # Within a lease TTL of the delivery its consumer may still be taking the lease.
        assert _scan(app, settings, client, time.time() + TTL_S / 2) == []
        assert _scan(app, settings, client, time.time() + TTL_S + 1) == [job]
        assert client.hlen("unacked") == 0 and client.llen(queue) == 1
        # A second restorer finds nothing: the message went back once.
        assert _scan(app, settings, client, time.time() + TTL_S + 1) == []
        assert client.llen(queue) == 1
        assert ledger.get(job)["restored"] == "1"  # type: ignore[index]
    finally:
        simple.close()
        connection.close()
    assert client.llen(queue) == 1  # the holder's own close restored nothing more


@pytest.mark.parametrize("case", ["live-lease", "finished", "eta-ahead", "mutex"])
def test_what_is_left_alone(setup: tuple[Any, Settings, redis.Redis, str], case: str) -> None:
    app, settings, client, queue = setup
    job = uuid.uuid4().hex
    key = uuid.uuid4().hex
    state = "done" if case == "finished" else "running"
    client.hset(f"voxfleet:job:{job}", mapping={"state": state, "job_key": key})
    if case == "live-lease":
        client.set(LEASE_PREFIX + key, "someone", px=60_000)
    eta = None
    far = time.time() + 7 * 24 * 3600  # a week on: far past any visibility timeout
    if case == "eta-ahead":  # a deferral or retry waiting for its countdown in a live consumer
        eta = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        far = time.time() + TTL_S + 10
    connection, simple = _held(app, queue, job, eta)
    try:
        if case == "mutex":  # another consumer is scanning right now
            client.set(MUTEX, "other", px=60_000)
            assert Redelivery(app, settings).scan(now=far) == []
        else:
            assert _scan(app, settings, client, far) == []
        assert client.hlen("unacked") == 1 and client.llen(queue) == 0
    finally:
        simple.close()
        connection.close()
