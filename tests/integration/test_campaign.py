"""A campaign through three real consumers sharing a real Dask scheduler, results in S3."""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import ExitStack
from pathlib import Path

import boto3
import pytest
import redis

from producer.jobs import wait_for
from producer.server import EmbeddedRedis
from shared.settings import Settings
from tests.integration.harness import consumer_env, running_consumer, voxfleet

N_JOBS = 30


@pytest.fixture(scope="module")
def cohort(subject_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 subjects in the HCP layout (copies of one phantom under 30 ids: distinct jobs)."""
    root = tmp_path_factory.mktemp("cohort")
    for i in range(N_JOBS):
        shutil.copytree(subject_dir, root / f"{200000 + i}")
    return root


def test_campaign_of_30_jobs_on_3_consumers(
    cohort: Path,
    dask_address: str,
    redis_server: EmbeddedRedis,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    queue = f"camp-{uuid.uuid4().hex[:6]}"
    env = consumer_env(
        redis_server.url, s3_endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_DEFAULT_CLUSTER=dask_address
    )
    settings = Settings(broker_url=redis_server.url, s3_endpoint_url=s3_endpoint, queue=queue)
    results = f"s3://{bucket}/derivatives"
    name = f"reprocess-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        for i in range(3):
            stack.enter_context(running_consumer(env, tmp_path / f"consumer-{i}.log"))
        dry = voxfleet(env, "campaign", "submit", name, "dti", "--inputs", str(cohort),
                       "--results", results, "--dry-run", "--json")  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["to_enqueue"] == N_JOBS
        assert redis.Redis.from_url(redis_server.url).llen(queue) == 0  # dry run enqueued nothing

        first = voxfleet(env, "campaign", "submit", name, "dti", "--inputs", str(cohort),
                         "--results", results, "--json")  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["enqueued"] == N_JOBS

        # Resubmitting while jobs are still in flight enqueues nothing either.
        again = voxfleet(env, "campaign", "submit", name, "dti", "--inputs", str(cohort),
                         "--results", results, "--only-missing", "--json")  # fmt: skip
        assert json.loads(again.stdout)["enqueued"] == 0, again.stdout

        from producer.campaign import campaign_status

        status = campaign_status(name, settings)
        ids = [job.job_id for job in status.jobs]
        records = wait_for(ids, settings, timeout_s=600)
        assert {r["state"] for r in records.values()} == {"done"}, records
        consumers_used = {r["consumer"] for r in records.values()}
        assert len(consumers_used) >= 2, consumers_used

    # Exactly one commit per job in the store, and no orphaned attempt.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in p.get("Contents", [])]  # fmt: skip
    manifests = [k for k in keys if k.endswith("manifest.json")]
    assert len(manifests) == N_JOBS
    attempts = {tuple(k.split("/")[1:5]) for k in keys if k.count("/") >= 5}
    assert len(attempts) == N_JOBS  # one attempt folder per job

    # Status agrees with the store.
    status_json = json.loads(voxfleet(env, "campaign", "status", name, "--json").stdout)
    assert status_json["counts"] == {"done": N_JOBS} and status_json["failures"] == []

    # Resubmitting with --only-missing now finds everything committed.
    again = voxfleet(env, "campaign", "submit", name, "dti", "--inputs", str(cohort),
                     "--results", results, "--only-missing", "--json")  # fmt: skip
    assert json.loads(again.stdout)["enqueued"] == 0
    assert json.loads(again.stdout)["skipped"] == N_JOBS

    # The report is built from the timing.json files and agrees with the store.
    out = tmp_path / "report"
    rep = voxfleet(env, "campaign", "report", name, "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    html = (out / "index.html").read_text()
    assert name in html and str(N_JOBS) in html
    assert list(out.glob("*.png"))

    # Redis loses everything: status is rebuilt from the plan and the manifests.
    redis.Redis.from_url(redis_server.url).flushall()
    gone = voxfleet(env, "campaign", "status", name, "--json")
    assert gone.returncode == 2 and "--results" in gone.stderr
    rebuilt = json.loads(
        voxfleet(env, "campaign", "status", name, "--json", "--results", results).stdout
    )
    assert rebuilt["source"] == "store" and rebuilt["counts"] == {"done": N_JOBS}

    # One table for the campaign, from the manifests alone (Redis is empty now): Parquet and CSV.
    import pyarrow.parquet as pq

    table_path = tmp_path / "table.parquet"
    made = voxfleet(
        env, "campaign", "results", name, "--out", str(table_path), "--results", results
    )
    assert made.returncode == 0, made.stderr
    table = pq.read_table(table_path).to_pylist()
    assert len(table) == N_JOBS and {row["state"] for row in table} == {"done"}
    assert sorted(row["subject"] for row in table) == sorted(j.subject for j in status.jobs)
    assert all(0 < row["fa_median"] < 1 and row["wall_s"] > 0 for row in table)
    assert {row["result_uri"] for row in table} == {f"s3://{bucket}/{k}" for k in manifests}
    assert all(row["voxfleet"] and row["pipeline_version"] for row in table)
    csv_path = tmp_path / "table.csv"
    voxfleet(env, "campaign", "results", name, "--out", str(csv_path), "--results", results)
    lines = csv_path.read_text().splitlines()
    assert len(lines) == N_JOBS + 1 and "fa_median" in lines[0].split(",")
    bad = voxfleet(env, "campaign", "results", name, "--out", str(tmp_path / "t.xlsx"),
                   "--results", results)  # fmt: skip
    assert bad.returncode != 0 and ".parquet or .csv" in bad.stderr
    assert not (tmp_path / "t.xlsx").exists()


def test_bad_manifest_rows_are_reported_by_line_and_nothing_is_enqueued(
    redis_server: EmbeddedRedis, s3_endpoint: str, tmp_path: Path, cohort: Path
) -> None:
    manifest = tmp_path / "subjects.csv"
    manifest.write_text(
        "input,subject,fit_method\n"
        f"{cohort / '200000'},200000,WLS\n"
        f"{cohort / '200001'},../evil,WLS\n"
        f"{cohort / '200002'},200002,MAGIC\n"
        f"{cohort / '200003'},200003\n"
    )
    queue = f"bad-{uuid.uuid4().hex[:6]}"
    env = consumer_env(redis_server.url, s3_endpoint, VOXFLEET_QUEUE=queue)
    result = voxfleet(env, "campaign", "submit", "bad", "dti", "--inputs", str(manifest),
                      "--results", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: line 3: subject") and "unsafe" not in lines[0]
    assert lines[1].startswith("error: line 4: fit_method")
    assert lines[2].startswith("error: line 5: 2 fields, header has 3")
    assert redis.Redis.from_url(redis_server.url).llen(queue) == 0


def test_cancel_drops_queued_jobs_and_retry_brings_back_failures(
    redis_server: EmbeddedRedis, s3_endpoint: str, tmp_path: Path, cohort: Path, dask_address: str
) -> None:
    queue = f"cancel-{uuid.uuid4().hex[:6]}"
    env = consumer_env(
        redis_server.url, s3_endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_DEFAULT_CLUSTER=dask_address
    )
    settings = Settings(broker_url=redis_server.url, s3_endpoint_url=s3_endpoint, queue=queue)
    inputs = tmp_path / "inputs"
    for sid in ("300000", "300001", "300002"):
        shutil.copytree(cohort / "200000", inputs / sid)
    broken = inputs / "300002" / "T1w/Diffusion/bvals"
    saved = broken.read_text()
    broken.write_text("0 1000\n")
    results = str(tmp_path / "results")

    # Nobody consumes yet: cancelling drops everything queued, and empties the campaign's own
    # queue (the CLI's default queue is another one).
    cli_env = {**env, "VOXFLEET_QUEUE": "voxfleet"}
    sub = voxfleet(cli_env, "campaign", "submit", "c1", "dti", "--inputs", str(inputs),
                   "--results", results, "--queue", queue)  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    assert redis.Redis.from_url(redis_server.url).llen(queue) == 3
    assert voxfleet(cli_env, "campaign", "cancel", "c1").returncode == 0
    from producer.campaign import campaign_status

    assert campaign_status("c1", settings).counts == {"cancelled": 3}
    assert redis.Redis.from_url(redis_server.url).llen(queue) == 0

    # Retry brings them back; one has bad input and fails with its reason.
    assert voxfleet(cli_env, "campaign", "retry", "c1").returncode == 0
    with running_consumer(env, tmp_path / "consumer.log"):
        ids = [j.job_id for j in campaign_status("c1", settings).jobs]
        wait_for(ids, settings, timeout_s=300)
        status = campaign_status("c1", settings)
        assert status.counts == {"done": 2, "failed": 1}
        assert "bval" in next(j.reason for j in status.jobs if j.state == "failed")

        # Fix the input and retry only the failure.
        broken.write_text(saved)
        assert voxfleet(cli_env, "campaign", "retry", "c1", "--failed-only").returncode == 0
        ids = [j.job_id for j in campaign_status("c1", settings).jobs]
        wait_for(ids, settings, timeout_s=300)
        assert campaign_status("c1", settings).counts == {"done": 3}
