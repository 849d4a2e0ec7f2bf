"""Cluster backends through a real consumer: an existing scheduler (real ``dask scheduler`` and
``dask worker`` processes, never torn down by voxfleet) and Coiled through a stand-in."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from distributed import Client

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.integration.harness import consumer_env, dask_cluster_processes, running_consumer

STANDINS = str(Path(__file__).resolve().parents[1] / "standins")


def test_existing_scheduler_is_used_and_left_running(
    redis_server: EmbeddedRedis, s3_endpoint: str, subject_dir: Path, tmp_path: Path
) -> None:
    queue = f"addr-{uuid.uuid4().hex[:6]}"
    with dask_cluster_processes(tmp_path) as address:
        env = consumer_env(
            redis_server.url, s3_endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_DEFAULT_CLUSTER=address
        )
        settings = Settings(broker_url=redis_server.url, queue=queue)
        with running_consumer(env, tmp_path / "consumer.log"):
            spec = JobSpec(
                pipeline="dti", input_uri=str(subject_dir), results_uri=str(tmp_path / "r")
            )
            submit([spec], settings)
            record = wait_for([spec.job_id], settings, timeout_s=180)[spec.job_id]
        assert record["state"] == "done", record
        cluster_info = record["timing"]["cluster"]
        assert cluster_info["backend"] == "address" and cluster_info["address"] == address
        assert cluster_info["workers"] == 2
        # voxfleet never tears down a cluster it did not create.
        with Client(address, timeout=10) as client:
            assert len(client.scheduler_info()["workers"]) == 2


def test_coiled_cluster_is_closed_when_the_consumer_is_told_to_stop(
    redis_server: EmbeddedRedis, s3_endpoint: str, subject_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM mid-job (scale-in): the job finishes, the cluster is closed, the consumer exits."""
    queue = f"coiled-{uuid.uuid4().hex[:6]}"
    events = tmp_path / "coiled-events.jsonl"
    env = consumer_env(
        redis_server.url,
        s3_endpoint,
        VOXFLEET_QUEUE=queue,
        VOXFLEET_DEFAULT_CLUSTER="coiled",
        VOXFLEET_TEST_COILED_LOG=str(events),
        # Long enough for this small job to finish after SIGTERM (the requeue path is
        # tests/faults/test_scale_in.py's).
        VOXFLEET_SOFT_SHUTDOWN_S="300",
        PYTHONPATH=STANDINS,
    )
    settings = Settings(broker_url=redis_server.url, queue=queue)
    ledger = Ledger.from_url(redis_server.url, 60)
    spec = JobSpec(
        pipeline="dti",
        input_uri=str(subject_dir),
        results_uri=str(tmp_path / "r"),
        campaign="scale-in",
    )
    with running_consumer(env, tmp_path / "consumer.log") as consumer:
        submit([spec], settings)
        deadline = time.monotonic() + 120
        while not events.exists():  # the stand-in cluster exists: the job is mid-flight
            assert time.monotonic() < deadline and consumer.poll() is None
            time.sleep(0.1)
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(timeout=120) == 0
    record = ledger.get(spec.job_id)
    assert record is not None and record["state"] == "done", record
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["create", "close"]
    kwargs = lines[0]["kwargs"]
    assert kwargs["tags"] == {
        "voxfleet-campaign": "scale-in",
        "voxfleet-job": spec.job_id,
        "voxfleet-pipeline": "dti",
    }
    assert kwargs["name"] == f"voxfleet-{spec.key[:16]}"
    assert record["timing"]["cluster"]["tags"]["voxfleet-job"] == spec.job_id


@pytest.mark.usefixtures("subject_dir")
def test_warm_consumer_reuses_its_cluster_within_a_campaign(
    redis_server: EmbeddedRedis, s3_endpoint: str, subject_dir: Path, tmp_path: Path
) -> None:
    queue = f"warm-{uuid.uuid4().hex[:6]}"
    env = consumer_env(
        redis_server.url, s3_endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_KEEP_WARM="true",
        VOXFLEET_DEFAULT_CLUSTER="local:1",
    )  # fmt: skip
    settings = Settings(broker_url=redis_server.url, queue=queue)
    specs = [
        JobSpec(
            pipeline="dti",
            input_uri=str(subject_dir),
            results_uri=str(tmp_path / "r"),
            params={"b0_threshold": b0},  # distinct keys: three real jobs
            campaign="warm",
        )
        for b0 in (40, 50, 60)
    ]
    with running_consumer(env, tmp_path / "consumer.log"):
        submit(specs, settings)
        records = wait_for([s.job_id for s in specs], settings, timeout_s=240)
    clusters = [records[s.job_id]["timing"]["cluster"] for s in specs]
    assert [c["warm"] for c in clusters] == [False, True, True]
    assert len({c["dashboard"] for c in clusters}) == 1  # the same scheduler throughout
    assert clusters[1]["acquire_s"] == 0.0
