"""Fault 1: consumers SIGKILLed mid-job, again and again, at stages chosen at random.

Real consumer processes take tractography jobs from a real Redis and publish to the S3 test
server; a chaos loop waits (keyspace notifications, no polling) until a consumer enters the
stage drawn for the next kill -- CSD, tracking, publish, or the commit itself -- and SIGKILLs
its whole process group, then starts a replacement. Redis redelivers the dead consumer's
message after the visibility timeout. Meanwhile a reader polls the bucket. Every job must be
committed exactly once, the reader must never see a partial result, and the dead attempts'
files must be gone at the end.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.faults.chaos import PublicationWatcher, StageEvents, consumer_name, fleet
from tests.faults.record import record
from tests.integration.harness import consumer_env, dask_cluster_processes

SEED = 20261122
KILLS = 10
JOBS = 4
STAGES = ("csd", "tracking", "publish", "commit")
VISIBILITY_S = 30  # a killed consumer's job is back within this plus the 1 s restore interval


def committed_layout(s3: Any, bucket: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(job prefix -> its manifest, objects outside every committed attempt)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    manifests = {
        k.removesuffix("/manifest.json"): json.loads(
            s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        )
        for k in keys
        if k.endswith("/manifest.json")
    }
    stray = [
        k
        for k in keys
        if not k.endswith("/manifest.json")
        and not any(k.startswith(f"{job}/{m['attempt']}/") for job, m in manifests.items())
    ]
    return manifests, stray


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_at_random_stages_loses_nothing_and_publishes_once(
    broker: EmbeddedRedis, s3_endpoint: str, bucket: str, subject_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    plan = [rng.choice(STAGES) for _ in range(KILLS)]
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    inputs = tmp_path / "inputs"
    for i in range(JOBS):
        shutil.copytree(subject_dir, inputs / f"{400000 + i}")
    specs = [
        JobSpec(
            pipeline="tractography",
            input_uri=str(inputs / f"{400000 + i}"),
            results_uri=f"s3://{bucket}/derivatives",
            # Coarse steps on the phantom's 6 mm grid keep tracking to seconds: the kills,
            # not the science, are under test here.
            params={"shards": 4, "csd_chunks": 8, "qc": False, "step_size": 2.0, "max_len": 120},
        )
        for i in range(JOBS)
    ]
    settings = Settings(broker_url=broker.url, s3_endpoint_url=s3_endpoint, queue=queue)  # type: ignore[arg-type]
    events = StageEvents(broker.url)
    kills: list[dict[str, object]] = []
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    with (
        dask_cluster_processes(tmp_path, n_workers=2) as dask_address,
        PublicationWatcher(s3_endpoint, bucket) as reader,
        fleet(
            consumer_env(
                broker.url,
                s3_endpoint,
                VOXFLEET_QUEUE=queue,
                VOXFLEET_DEFAULT_CLUSTER=dask_address,
                VOXFLEET_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
                VOXFLEET_UNACKED_RESTORE_INTERVAL_S="1",
                VOXFLEET_LEASE_TTL_S="4",
            ),
            tmp_path,
        ) as consumers,
    ):
        consumers.start()
        consumers.start()
        submit(specs, settings)
        for target in plan:
            hit = events.wait(
                lambda _, r, stage=target: (  # type: ignore[misc]
                    r.get("state") == "running"
                    and r.get("stage") == stage
                    and consumer_name(r) in consumers.processes
                ),
                timeout_s=600,
            )
            assert hit is not None, f"no consumer reached stage {target!r} (kills so far: {kills})"
            job_id, seen = hit
            victim = consumer_name(seen)
            consumers.kill(victim)
            spec = next(s for s in specs if s.job_id == job_id)
            manifest = f"derivatives/{spec.result_prefix}/manifest.json"
            committed = "Contents" in s3.list_objects_v2(Bucket=bucket, Prefix=manifest)
            kills.append(
                {"stage": target, "job": job_id, "attempt": seen.get("attempts"),
                 "committed_before_kill": committed}
            )  # fmt: skip
            consumers.start(wait=False)  # the fleet scales back up, as an autoscaler would
        records = wait_for([s.job_id for s in specs], settings, timeout_s=900)
        reader.check()  # one last look, after everything settled
    events.close()

    manifests, stray = committed_layout(s3, bucket)
    by_job = {m["job_id"]: m for m in manifests.values()}
    lost = [
        s.job_id for s in specs if records[s.job_id]["state"] != "done" or s.job_id not in by_job
    ]
    duplicates = sum(len(tags) - 1 for tags in reader.seen.manifests_seen.values()) + (
        len(manifests) - len(by_job)
    )
    # Every committed file is there with the checksum its manifest gives.
    for job, manifest in manifests.items():
        for entry in manifest["files"]:
            body = s3.get_object(Bucket=bucket, Key=f"{job}/{entry['key']}")["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry["sha256"], entry["key"]
    ledger = Ledger.from_url(broker.url, 60)
    attempts = {s.job_id: int(ledger.get(s.job_id)["attempts"]) for s in specs}  # type: ignore[index]
    removed = sum(int(ledger.get(s.job_id).get("orphans_removed", 0)) for s in specs)  # type: ignore[union-attr]
    record(
        "fault",
        "consumer SIGKILLed mid-job (process group, Dask client with it)",
        injected=len(kills),
        lost=len(lost),
        duplicates=duplicates,
        partial_visible=len(reader.seen.partial),
        jobs=JOBS,
        seed=SEED,
        stages=dict(Counter(k["stage"] for k in kills)),
        killed_after_commit=sum(bool(k["committed_before_kill"]) for k in kills),
        deliveries=sum(attempts.values()),
        orphan_objects_removed=removed,
        orphan_objects_left=len(stray),
        reader_polls=reader.seen.polls,
        answer="redelivered after the visibility timeout; each job committed once; "
        "the next attempt deleted the dead attempts' files",
    )
    assert len(kills) == KILLS
    assert lost == [], records
    assert duplicates == 0
    assert reader.seen.partial == []
    assert stray == [], stray[:10]
    # Each kill before a commit cost the job one delivery more.
    assert sum(attempts.values()) >= JOBS + sum(not k["committed_before_kill"] for k in kills)
