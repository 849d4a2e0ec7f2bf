"""Fault 4: S3 unreachable for 30 s while a job publishes (retried with backoff, then
committed), and S3 refusing for good -- a missing bucket, a policy that denies writes -- which
fails the job at once with the reason."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.faults.chaos import OneJob, PublicationWatcher, StageEvents, fleet
from tests.faults.netcut import CuttableLink, iam_enforcing_s3
from tests.faults.record import record
from tests.integration.harness import consumer_env

OUTAGE_S = 30.0
RETRY = re.compile(r"retry: Retry in ([0-9.]+)s")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_s3_unreachable_for_30s_during_publish_is_retried_then_committed(
    broker: EmbeddedRedis, s3_endpoint: str, bucket: str, subject_dir: Path, tmp_path: Path
) -> None:
    job = OneJob.make(broker.url, bucket, subject_dir, "s3out")
    queue, settings, spec = job.queue, job.settings, job.spec
    ledger = Ledger.from_url(broker.url, 60)
    events = StageEvents(broker.url)
    with CuttableLink(int(s3_endpoint.rsplit(":", 1)[1])) as link:
        env = consumer_env(
            broker.url,
            link.url,
            VOXFLEET_QUEUE=queue,
            VOXFLEET_DEFAULT_CLUSTER="local:1",
            VOXFLEET_MAX_RETRIES="10",
            VOXFLEET_RETRY_BACKOFF_S="1",
            VOXFLEET_RETRY_BACKOFF_MAX_S="16",
        )
        with PublicationWatcher(s3_endpoint, bucket) as reader, fleet(env, tmp_path) as consumers:
            name = consumers.start()
            submit([spec], settings)
            # Cut as the job enters its last local stage, so that its publish meets the outage.
            assert events.wait(lambda _, r: r.get("stage") == "write", 600)
            link.cut()
            cut_at = time.monotonic()
            retried = events.wait(lambda _, r: r.get("state") == "retrying", OUTAGE_S)
            restored = threading.Event()
            timer = threading.Timer(OUTAGE_S - (time.monotonic() - cut_at), restored.set)
            timer.start()
            restored.wait()  # the outage lasts its 30 s whatever the job does meanwhile
            link.restore()
            outage_s = time.monotonic() - cut_at
            final = wait_for([spec.job_id], settings, timeout_s=600)[spec.job_id]
            reader.check()
            log = consumers.log(name).read_text()
    events.close()

    delays = [float(d) for d in RETRY.findall(log)]
    job = ledger.get(spec.job_id) or {}
    record(
        "fault",
        "S3 unreachable for 30 s during publish (connections refused and reset)",
        injected=1,
        lost=0 if final["state"] == "done" else 1,
        duplicates=sum(len(t) - 1 for t in reader.seen.manifests_seen.values()),
        partial_visible=len(reader.seen.partial),
        outage_s=round(outage_s, 1),
        deliveries=int(job.get("attempts", 0)),
        retry_delays_s=delays,
        answer="TransientError: retried with exponential backoff and full jitter; "
        "committed once S3 answered again",
    )
    assert retried is not None, "the job did not retry while S3 was down"
    assert final["state"] == "done", final
    assert int(job["attempts"]) >= 2 and len(delays) == int(job["attempts"]) - 1
    assert reader.seen.partial == []
    assert len(reader.seen.manifests_seen) == 1
    assert all(len(t) == 1 for t in reader.seen.manifests_seen.values())


def _run_one(
    env: dict[str, str], settings: Settings, spec: JobSpec, log_dir: Path
) -> dict[str, str]:
    with fleet(env, log_dir) as consumers:
        consumers.start()
        submit([spec], settings)
        return wait_for([spec.job_id], settings, timeout_s=500)[spec.job_id]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_permanent_s3_errors_fail_the_job_at_once_with_the_reason(
    broker: EmbeddedRedis, s3_endpoint: str, subject_dir: Path, tmp_path: Path
) -> None:
    queue = f"s3perm-{uuid.uuid4().hex[:6]}"
    settings = Settings(broker_url=broker.url, queue=queue)  # type: ignore[arg-type]
    retries = {"VOXFLEET_QUEUE": queue, "VOXFLEET_DEFAULT_CLUSTER": "local:1",
               "VOXFLEET_MAX_RETRIES": "5"}  # fmt: skip
    results: dict[str, tuple[dict[str, str], str]] = {}

    missing = JobSpec(
        pipeline="dti",
        input_uri=str(subject_dir),
        results_uri=f"s3://vf-missing-{uuid.uuid4().hex[:8]}/r",
    )
    env = consumer_env(broker.url, s3_endpoint, **retries)
    results["missing bucket"] = (_run_one(env, settings, missing, tmp_path), "NoSuchBucket")

    # Four unauthenticated calls set up a bucket and a user allowed to read only; every call
    # after that is checked against IAM.
    with iam_enforcing_s3(tmp_path / "moto.log", unauthenticated_calls=4) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="readonly")
        iam.create_user(UserName="reader")
        iam.put_user_policy(
            UserName="reader",
            PolicyName="read-only",
            PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
            '"Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        env = consumer_env(
            broker.url,
            endpoint,
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
            **retries,
        )
        denied = JobSpec(pipeline="dti", input_uri=str(subject_dir), results_uri="s3://readonly/r")
        results["access denied (an IAM policy allows reads only)"] = (
            _run_one(env, settings, denied, tmp_path),
            "AccessDenied",
        )

    for what, (result, code) in results.items():
        record(
            "fault",
            f"permanent S3 error: {what}",
            injected=1,
            lost=0,  # failed on purpose, with its reason; nothing is published
            duplicates=0,
            partial_visible=0,
            state=result["state"],
            deliveries=int(result["attempts"]),
            answer=result.get("reason", ""),
        )
        assert result["state"] == "failed", result
        assert result["attempts"] == "1"  # at once: no retry
        assert code in result["reason"], result["reason"]
