"""Fault 3: the broker is killed (SIGKILL, no shutdown save) and restarted mid-campaign, with the
persistence settings infra/ ships (``infra/redis/redis.conf``: AOF, fsync always). Every queued
message, the one a consumer holds unacked, and every job record must come back; every job is
committed once."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
import redis

from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.faults.chaos import PublicationWatcher, StageEvents, fleet, wait_quiet
from tests.faults.record import ROOT, record
from tests.integration.harness import consumer_env

REDIS_CONF = ROOT / "infra" / "redis" / "redis.conf"
JOBS = 6


def _broker_state(url: str, queue: str) -> tuple[int, int, int]:
    """(messages queued, messages held unacked, job records)."""
    client = redis.Redis.from_url(url)
    try:
        return (
            int(client.llen(queue)),
            int(client.hlen("unacked")),
            len(list(client.scan_iter("voxfleet:job:*"))),
        )
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_broker_killed_and_restarted_mid_campaign_loses_nothing(
    s3_endpoint: str, bucket: str, subject_dir: Path, tmp_path: Path
) -> None:
    assert REDIS_CONF.is_file(), "infra/redis/redis.conf is the configuration under test"
    queue = f"restart-{uuid.uuid4().hex[:6]}"
    broker = EmbeddedRedis(tmp_path / "redis", config_file=REDIS_CONF).start()
    settings = Settings(broker_url=broker.url, queue=queue)  # type: ignore[arg-type]
    specs = [
        JobSpec(
            pipeline="dti",
            input_uri=str(subject_dir),
            results_uri=f"s3://{bucket}/r",
            params={"b0_threshold": 40 + i},  # distinct job keys: six real jobs
        )
        for i in range(JOBS)
    ]
    env = consumer_env(
        broker.url,
        s3_endpoint,
        VOXFLEET_QUEUE=queue,
        VOXFLEET_DEFAULT_CLUSTER="local:1",
        VOXFLEET_VISIBILITY_TIMEOUT_S="60",
        VOXFLEET_UNACKED_RESTORE_INTERVAL_S="1",
        VOXFLEET_LEASE_TTL_S="5",
    )
    try:
        events = StageEvents(broker.url)
        with (
            PublicationWatcher(s3_endpoint, bucket) as reader,
            fleet(env, tmp_path) as consumers,
        ):
            consumers.start()
            submit(specs, settings)
            # Kill it while a job is mid-pipeline and others still wait in the queue.
            assert events.wait(lambda _, r: r.get("stage") == "dti", 300)
            before = _broker_state(broker.url, queue)
            events.close()
            port = broker.port
            broker.kill()
            broker.start(port=port)
            after = _broker_state(broker.url, queue)
            records = wait_for([s.job_id for s in specs], settings, timeout_s=600)
            wait_quiet(broker.url, queue, 300)
            reader.check()
    finally:
        broker.close()

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    manifests = [
        k["Key"]
        for k in s3.list_objects_v2(Bucket=bucket, Prefix="r/").get("Contents", [])
        if k["Key"].endswith("/manifest.json")
    ]
    lost = [s.job_id for s in specs if records[s.job_id]["state"] != "done"]
    duplicates = sum(len(tags) - 1 for tags in reader.seen.manifests_seen.values())
    record(
        "fault",
        "Redis SIGKILLed and restarted mid-campaign (infra/redis/redis.conf: AOF, fsync always)",
        injected=1,
        lost=len(lost),
        duplicates=duplicates,
        partial_visible=len(reader.seen.partial),
        jobs=JOBS,
        queued_unacked_records_before=list(before),
        queued_unacked_records_after=list(after),
        answer="the AOF replayed every queued message, the unacked one and every job record; "
        "all jobs committed once",
    )
    assert after == before, (before, after)
    assert lost == [], records
    assert len(manifests) == JOBS
    assert duplicates == 0
    assert reader.seen.partial == []
