"""Transient failures are retried with backoff; when they persist the job fails, once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis, free_port
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.integration.harness import consumer_env, running_consumer


def _wait_for_state(ledger: Ledger, job_id: str, state: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (ledger.get(job_id) or {}).get("state") != state:
        assert time.monotonic() < deadline, f"{job_id} never reached {state}"
        time.sleep(0.1)


def test_s3_outage_is_retried_then_committed(
    redis_server: EmbeddedRedis, subject_dir: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here yet: S3 is "down"
    endpoint = f"http://127.0.0.1:{port}"
    queue = f"retry-{uuid.uuid4().hex[:6]}"
    env = consumer_env(redis_server.url, endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_MAX_RETRIES="20")
    settings = Settings(broker_url=redis_server.url, s3_endpoint_url=endpoint, queue=queue)
    ledger = Ledger.from_url(redis_server.url, 60)
    with running_consumer(env, tmp_path / "consumer.log"):
        spec = JobSpec(pipeline="dti", input_uri=str(subject_dir), results_uri="s3://late/results")
        submit([spec], settings)
        _wait_for_state(ledger, spec.job_id, "retrying")
        assert "unreachable" in ledger.get(spec.job_id)["reason"]  # type: ignore[index]

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="late")
            record = wait_for([spec.job_id], settings, timeout_s=180)[spec.job_id]
            assert record["state"] == "done", record
            assert int(record["attempts"]) >= 2
            keys = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="late")
            assert any(o["Key"].endswith("manifest.json") for o in keys["Contents"])
        finally:
            server.stop()


@pytest.mark.usefixtures("subject_dir")
def test_persistent_outage_gives_up_after_max_retries(
    redis_server: EmbeddedRedis, subject_dir: Path, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    queue = f"retry-{uuid.uuid4().hex[:6]}"
    env = consumer_env(redis_server.url, endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_MAX_RETRIES="2")
    settings = Settings(broker_url=redis_server.url, s3_endpoint_url=endpoint, queue=queue)
    with running_consumer(env, tmp_path / "consumer.log"):
        spec = JobSpec(pipeline="dti", input_uri=str(subject_dir), results_uri="s3://gone/r")
        submit([spec], settings)
        record = wait_for([spec.job_id], settings, timeout_s=120)[spec.job_id]
    assert record["state"] == "failed"
    assert record["reason"].startswith("gave up after 2 retries: S3 unreachable")
    assert record["attempts"] == "3"
    dead = Ledger.from_url(redis_server.url, 60).dead_letters(50)
    assert any(d["job_id"] == spec.job_id for d in dead)
