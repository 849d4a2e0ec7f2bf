"""Fault: a consumer SIGKILLed mid-job (the OOM killer, a spot reclaim past its notice, a lost
node), with the broker's *default* visibility timeout of 12 hours.

Redis alone would hand the job to another consumer only after those 12 hours (celery#5935).
The job's lease says sooner that its holder is dead: every consumer's redelivery thread
(``consumers.redelivery``) puts a message back on its queue once its lease has expired. Here
the job must be committed by the second consumer within the lease TTL, one scan interval and
the job's own run time; a job whose lease stays alive must never be restored, however long it
runs; and a job that kills its consumer every time is failed after ``VOXFLEET_MAX_DELIVERIES``
deaths, with the reason, while the fleet goes on with the other jobs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.settings import Settings
from tests.faults.chaos import OneJob, PublicationWatcher, StageEvents, fleet, wait_quiet
from tests.faults.record import record
from tests.integration.harness import consumer_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LEASE_TTL_S = 6.0
SCAN_S = 2.0
VISIBILITY_S = Settings.model_fields["visibility_timeout_s"].default  # 12 h: not set below


def _env(broker: EmbeddedRedis, s3_endpoint: str, queue: str, **extra: str) -> dict[str, str]:
    env = consumer_env(
        broker.url,
        s3_endpoint,
        VOXFLEET_QUEUE=queue,
        VOXFLEET_DEFAULT_CLUSTER="local:1",
        VOXFLEET_LEASE_TTL_S=str(LEASE_TTL_S),
        VOXFLEET_REDELIVERY_INTERVAL_S=str(SCAN_S),
        **extra,
    )
    assert "VOXFLEET_VISIBILITY_TIMEOUT_S" not in env
    return env


@pytest.mark.parametrize("kill", ["consumer", "group"])
def test_a_killed_consumers_job_runs_again_within_a_lease_ttl(
    broker: EmbeddedRedis,
    s3_endpoint: str,
    bucket: str,
    subject_dir: Path,
    tmp_path: Path,
    kill: str,
) -> None:
    job = OneJob.make(broker.url, bucket, subject_dir, f"dead-{kill}", "tractography")
    events = StageEvents(broker.url)
    with (
        PublicationWatcher(s3_endpoint, bucket) as reader,
        fleet(_env(broker, s3_endpoint, job.queue), tmp_path) as consumers,
    ):
        victim = consumers.start()
        submit([job.spec], job.settings)
        assert events.wait(lambda _, r: r.get("stage") == "csd", 300), "the job never ran"
        consumers.start()  # idle, ready: it takes the job once it is back on the queue
        process = consumers.processes.pop(victim)
        killed_at = time.time()
        if kill == "group":  # the consumer and its Dask workers, as losing the node would
            os.killpg(process.pid, signal.SIGKILL)
        else:  # the consumer alone, as the OOM killer picks the largest process
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        second = events.wait(lambda _, r: int(r.get("attempts", 0)) >= 2, 300)
        assert second is not None, "the job was never delivered again"
        delay = time.time() - killed_at
        done = wait_for([job.spec.job_id], job.settings, timeout_s=600)[job.spec.job_id]
        wait_quiet(broker.url, job.queue, 120)
        reader.check()
        if kill == "consumer":  # its orphaned workers lost their scheduler; reap them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    events.close()

    ledger = Ledger.from_url(broker.url, 60).get(job.spec.job_id)
    assert ledger is not None
    record(
        "fault",
        f"consumer SIGKILLed mid-job ({kill}), default visibility timeout",
        injected=1,
        lost=0 if done["state"] == "done" else 1,
        duplicates=len(reader.seen.manifests_seen.get(job.prefix, ())) - 1,
        partial_visible=len(reader.seen.partial),
        visibility_timeout_s=VISIBILITY_S,
        lease_ttl_s=LEASE_TTL_S,
        redelivery_interval_s=SCAN_S,
        kill_to_second_delivery_s=round(delay, 1),
        answer="the job's lease expired; a live consumer's redelivery scan put the message "
        "back on its queue and another consumer committed the job",
    )
    assert done["state"] == "done", done
    assert ledger["restored"] == "1" and ledger.get("deaths") == "1"
    # Within a lease TTL (the lease outlives its holder by at most that), one scan and slack
    # for a loaded 2-core machine; 12 h without the scan.
    assert delay <= LEASE_TTL_S + SCAN_S + 10, delay
    assert reader.seen.partial == []
    assert len(reader.seen.manifests_seen[job.prefix]) == 1


def test_a_long_job_with_a_live_lease_is_never_restored(
    broker: EmbeddedRedis, s3_endpoint: str, bucket: str, subject_dir: Path, tmp_path: Path
) -> None:
    """The job runs for many lease TTLs and scans, on a consumer beside an idle one that scans
    too: its lease is renewed, so its message is never put back."""
    job = OneJob.make(broker.url, bucket, subject_dir, "alive", "tractography")
    ttl_s = 2.0
    env = _env(
        broker,
        s3_endpoint,
        job.queue,
        VOXFLEET_LEASE_TTL_S=str(ttl_s),
        VOXFLEET_REDELIVERY_INTERVAL_S="0.5",
    )
    with fleet(env, tmp_path) as consumers:
        consumers.start()
        consumers.start()
        submit([job.spec], job.settings)
        done = wait_for([job.spec.job_id], job.settings, timeout_s=600)[job.spec.job_id]
        wait_quiet(broker.url, job.queue, 120)
    ledger = Ledger.from_url(broker.url, 60).get(job.spec.job_id)
    assert ledger is not None and done["state"] == "done"
    wall = float(done["timing"]["wall_s"])
    record(
        "fault",
        "job running for many lease TTLs beside scanning consumers",
        injected=0,
        lost=0,
        job_wall_s=round(wall, 1),
        lease_ttl_s=ttl_s,
        scans_during_the_job=int(2 * wall / 0.5),
        restored=int(ledger.get("restored", 0)),
        answer="never restored: its lease was renewed every third of its TTL",
    )
    assert wall > 5 * ttl_s, wall  # the job did outlive its lease many times over
    assert "restored" not in ledger and ledger["attempts"] == "1"
    assert "deferrals" not in ledger
