"""Our bulk messages are the ones kombu would write for send_task, byte for byte in meaning."""

from __future__ import annotations

import base64
import json

import redis

from consumers.app import make_app
from producer.bulk import envelope, publish_bulk, queue_list
from producer.server import EmbeddedRedis
from shared.jobspec import TASK_NAME, JobSpec
from shared.settings import Settings

VARYING = {"origin", "argsrepr", "reply_to", "delivery_tag"}


def test_envelope_matches_kombu(redis_server: EmbeddedRedis) -> None:
    settings = Settings(broker_url=redis_server.url)
    spec = JobSpec(pipeline="dti", input_uri="s3://b/hcp/1", results_uri="s3://b/o", campaign="c")
    app = make_app(settings)
    app.send_task(TASK_NAME, args=[spec.to_message()], task_id=spec.job_id, queue="kombu-q")
    app.close()
    client = redis.Redis.from_url(redis_server.url)
    theirs = json.loads(client.rpop("kombu-q"))  # type: ignore[arg-type]
    ours = json.loads(envelope(spec, "kombu-q"))
    assert set(ours) == set(theirs)
    for part in ("headers", "properties"):
        assert set(ours[part]) == set(theirs[part])
        for name, value in theirs[part].items():
            if name not in VARYING:
                assert ours[part][name] == value, (part, name)
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(theirs["body"])
    )
    for name in ("content-type", "content-encoding"):
        assert ours[name] == theirs[name]


def test_publish_bulk_batches_and_indexes(redis_server: EmbeddedRedis) -> None:
    settings = Settings(broker_url=redis_server.url)
    specs = [
        JobSpec(
            pipeline="dti", input_uri=f"s3://b/hcp/{i}", results_uri="s3://b/o", campaign="bulk"
        )
        for i in range(2500)
    ]
    seen: list[int] = []
    sent = publish_bulk(
        specs, settings, campaign="bulk", queue="bulk-q", batch=1000, progress=seen.append
    )
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert sent == 2500 and seen == [1000, 1000, 500]
    assert client.llen("bulk-q") == 2500
    index = client.hgetall("voxfleet:campaign:bulk:jobs")
    assert index[specs[7].job_id] == f"{specs[7].subject} {specs[7].key}"
    # First in, first out, as kombu consumes (LPUSH + BRPOP).
    first = json.loads(client.rpop("bulk-q"))  # type: ignore[arg-type]
    assert first["headers"]["id"] == specs[0].job_id


def test_priority_lists() -> None:
    assert queue_list("q", 0) == "q"
    assert queue_list("q", 2) == "q"
    assert queue_list("q", 3) == "q\x06\x163"
    assert queue_list("q", 9) == "q\x06\x169"
