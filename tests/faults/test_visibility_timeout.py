"""Fault 2: a job that outlives the broker's visibility timeout, so Redis hands its message to a
second consumer while the first is still working on it.

Two defences, both exercised here with real consumers (docs/reliability.md says why both):
the job's *lease* (a Redis key the running consumer renews) makes the redelivered copy defer
instead of running; the manifest's *conditional commit* decides when the lease cannot -- here
the first consumer is frozen (SIGSTOP) past its lease, the copy takes over and commits, and the
first, woken, must publish nothing.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import boto3
import pytest

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from tests.faults.chaos import (
    OneJob,
    PublicationWatcher,
    StageEvents,
    attempts_seen,
    fleet,
    wait_quiet,
)
from tests.faults.record import record
from tests.integration.harness import consumer_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _env(broker: EmbeddedRedis, s3_endpoint: str, queue: str, **extra: str) -> dict[str, str]:
    return consumer_env(
        broker.url,
        s3_endpoint,
        VOXFLEET_QUEUE=queue,
        VOXFLEET_DEFAULT_CLUSTER="local:1",
        VOXFLEET_VISIBILITY_TIMEOUT_S="3",
        VOXFLEET_UNACKED_RESTORE_INTERVAL_S="1",
        VOXFLEET_LEASE_TTL_S="3",
        **extra,
    )


def _json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[no-any-return]


def test_redelivered_copy_of_a_running_job_defers_and_publishes_nothing(
    broker: EmbeddedRedis, s3_endpoint: str, bucket: str, subject_dir: Path, tmp_path: Path
) -> None:
    # Long enough that Redis redelivers it (3 s visibility) while it runs on the first consumer.
    job = OneJob.make(broker.url, bucket, subject_dir, "vis", "tractography")
    queue, settings, spec = job.queue, job.settings, job.spec
    events = StageEvents(broker.url)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    with (
        PublicationWatcher(s3_endpoint, bucket) as reader,
        fleet(_env(broker, s3_endpoint, queue), tmp_path) as consumers,
    ):
        first = consumers.start()
        submit([spec], settings)
        assert events.wait(lambda _, r: r.get("state") == "running", 300)
        consumers.start()  # the second consumer is there to receive the redelivered copy
        deferred = events.wait(lambda _, r: int(r.get("deferrals", 0)) > 0, 300)
        assert deferred is not None, "the message was never redelivered while the job ran"
        wait_for([spec.job_id], settings, timeout_s=300)
        wait_quiet(broker.url, queue, 300)
        reader.check()
    events.close()

    ledger = Ledger.from_url(broker.url, 60).get(spec.job_id)
    assert ledger is not None
    manifest = _json(s3, bucket, f"{job.prefix}/manifest.json")
    consumer = _json(s3, bucket, f"{job.prefix}/{manifest['attempt']}/timing.json")["consumer"]
    attempts = attempts_seen(reader.seen.keys_ever, job.prefix)
    record(
        "fault",
        "job outlives the visibility timeout: Redis redelivers it while it runs",
        injected=int(ledger["deferrals"]),
        lost=0 if ledger["state"] == "done" else 1,
        duplicates=len(reader.seen.manifests_seen.get(job.prefix, ())) - 1,
        partial_visible=len(reader.seen.partial),
        visibility_timeout_s=3,
        deferrals=int(ledger["deferrals"]),
        attempt_folders_ever_seen=len(attempts),
        answer="the copy found the job's lease held and deferred itself; it never ran",
    )
    assert ledger["state"] == "done"
    assert int(ledger["deferrals"]) >= 1
    # Only the first consumer's attempt ever wrote anything; the copy never started.
    assert attempts == {manifest["attempt"]}
    assert consumer.startswith(first)
    assert reader.seen.partial == []
    assert len(reader.seen.manifests_seen[job.prefix]) == 1


def test_frozen_consumer_past_its_lease_loses_to_the_copy_and_publishes_nothing(
    broker: EmbeddedRedis, s3_endpoint: str, bucket: str, subject_dir: Path, tmp_path: Path
) -> None:
    job = OneJob.make(broker.url, bucket, subject_dir, "frz")
    queue, settings, spec = job.queue, job.settings, job.spec
    events = StageEvents(broker.url)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    with (
        PublicationWatcher(s3_endpoint, bucket) as reader,
        fleet(_env(broker, s3_endpoint, queue), tmp_path) as consumers,
    ):
        frozen = consumers.start()
        submit([spec], settings)
        assert events.wait(lambda _, r: r.get("stage") == "dti", 300)
        os.killpg(consumers.processes[frozen].pid, signal.SIGSTOP)  # consumer and its workers
        try:
            # A second consumer takes the redelivered copy once the frozen one's lease expired.
            # (It cannot answer a readiness ping while it runs the job: solo pool.)
            consumers.start(wait=False)
            wait_for([spec.job_id], settings, timeout_s=600)
        finally:
            os.killpg(consumers.processes[frozen].pid, signal.SIGCONT)
        # Woken, the first consumer finds its lease gone at its next stage boundary, or its
        # commit refused; either way it deletes its files and says so in the job record.
        stood_down = events.wait(lambda _, r: int(r.get("superseded", 0)) > 0, 600)
        consumers.stop_all()
        reader.check()
    events.close()

    ledger = Ledger.from_url(broker.url, 60).get(spec.job_id)
    assert ledger is not None
    manifest = _json(s3, bucket, f"{job.prefix}/manifest.json")
    consumer = _json(s3, bucket, f"{job.prefix}/{manifest['attempt']}/timing.json")["consumer"]
    attempts = attempts_seen(reader.seen.keys_ever, job.prefix)
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{job.prefix}/")
    left = {k["Key"][len(job.prefix) + 1 :].split("/", 1)[0] for k in listing["Contents"]}
    how = ledger.get("superseded_how", "never stood down")
    record(
        "fault",
        "consumer frozen (SIGSTOP) past its lease; the redelivered copy takes the job over",
        injected=1,
        lost=0 if ledger["state"] == "done" else 1,
        duplicates=len(reader.seen.manifests_seen.get(job.prefix, ())) - 1,
        partial_visible=len(reader.seen.partial),
        attempt_folders_ever_seen=len(attempts),
        attempt_folders_left=len(left - {"manifest.json"}),
        answer=f"the copy committed; the woken consumer {how} and deleted its files",
    )
    assert ledger["state"] == "done"
    assert not consumer.startswith(frozen)
    assert stood_down is not None, consumers.log(frozen).read_text()[-3000:]
    assert left == {"manifest.json", manifest["attempt"]}
    assert reader.seen.partial == []
    assert len(reader.seen.manifests_seen[job.prefix]) == 1
