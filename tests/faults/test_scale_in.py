"""Fault 5: SIGTERM to a consumer mid-job, as an autoscaler scaling in does. The job either
finishes within the consumer's grace period or is requeued and committed by another consumer;
the consumer exits within Kubernetes' default grace period (30 s), its Dask workers with it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from tests.faults.chaos import OneJob, PublicationWatcher, StageEvents, fleet
from tests.faults.record import record
from tests.integration.harness import consumer_env

KUBERNETES_GRACE_S = 30.0  # terminationGracePeriodSeconds' default


def _group(pgid: int) -> list[str]:
    """Command lines of the processes left in a consumer's process group."""
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(proc.info["cmdline"] or [])[-80:])
    return left


def _group_gone_s(pgid: int, t0: float, limit_s: float) -> float:
    """Seconds from ``t0`` until no process of the group is left (polled: nothing notifies
    about processes that are not our children)."""
    while _group(pgid) and time.monotonic() - t0 < limit_s:
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("soft_shutdown_s", "stage", "outcome", "pipeline"),
    # A dti job on this subject is over in seconds: a 3 s grace must cut a longer one.
    [(3.0, "dti", "requeued", "tractography"), (KUBERNETES_GRACE_S - 10, "qc", "done", "dti")],
)
def test_sigterm_mid_job_requeues_or_finishes_and_exits_in_time(
    broker: EmbeddedRedis,
    s3_endpoint: str,
    bucket: str,
    subject_dir: Path,
    tmp_path: Path,
    soft_shutdown_s: float,
    stage: str,
    outcome: str,
    pipeline: str,
) -> None:
    job = OneJob.make(broker.url, bucket, subject_dir, "term", pipeline)
    queue, settings, spec = job.queue, job.settings, job.spec
    env = consumer_env(
        broker.url,
        s3_endpoint,
        VOXFLEET_QUEUE=queue,
        VOXFLEET_DEFAULT_CLUSTER="local:1",
        VOXFLEET_SOFT_SHUTDOWN_S=str(soft_shutdown_s),
    )
    ledger = Ledger.from_url(broker.url, 60)
    events = StageEvents(broker.url)
    with PublicationWatcher(s3_endpoint, bucket) as reader, fleet(env, tmp_path) as consumers:
        name = consumers.start()
        submit([spec], settings)
        assert events.wait(lambda _, r: r.get("stage") == stage, 600)
        process = consumers.processes.pop(name)
        process.send_signal(signal.SIGTERM)  # to the consumer only, as the kubelet does
        t0 = time.monotonic()
        code = process.wait(timeout=KUBERNETES_GRACE_S * 3)
        exit_s = time.monotonic() - t0
        at_exit = _group(process.pid)  # its Dask workers, if still shutting down
        gone_s = _group_gone_s(process.pid, t0, KUBERNETES_GRACE_S * 2)
        after_exit = ledger.get(spec.job_id) or {}
        queued = redis.Redis.from_url(broker.url).llen(queue)
        if outcome == "requeued":
            consumers.start()  # another consumer picks the requeued job up
        final = wait_for([spec.job_id], settings, timeout_s=600)[spec.job_id]
        reader.check()
    events.close()

    observed = "requeued" if after_exit.get("state") == "queued" else after_exit.get("state")
    record(
        "fault",
        f"SIGTERM mid-job (scale-in), grace {soft_shutdown_s:g} s, signal during {stage}",
        injected=1,
        lost=0 if final["state"] == "done" else 1,
        duplicates=sum(len(t) - 1 for t in reader.seen.manifests_seen.values()),
        partial_visible=len(reader.seen.partial),
        exit_s=round(exit_s, 1),
        exit_code=code,
        group_gone_s=round(gone_s, 1),
        left_at_consumer_exit=len(at_exit),
        job_after_exit=observed,
        answer=(
            f"job {observed} within the grace period; consumer exited in {exit_s:.1f} s, "
            f"its Dask workers by {gone_s:.1f} s"
            + ("; another consumer committed it" if observed == "requeued" else "")
        ),
    )
    assert observed == outcome, after_exit
    assert exit_s < KUBERNETES_GRACE_S, exit_s
    assert gone_s < KUBERNETES_GRACE_S, at_exit  # everything the consumer started is gone
    assert queued == (1 if outcome == "requeued" else 0)
    assert final["state"] == "done"
    assert reader.seen.partial == []
    assert all(len(t) == 1 for t in reader.seen.manifests_seen.values())
