"""Campaigns over a raw BIDS dataset (sessions, runs, multi-shell, broken subjects) and over
QSIPrep derivatives (with and without a segmentation, a broken header), through real consumer
processes, Redis and two S3 servers: the inputs in a public bucket read with unsigned requests
only, the results in the lab's bucket on an IAM-enforcing server, written with its profile.
The results root that comes out passes the BIDS validator."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from producer.campaign import campaign_status
from producer.jobs import wait_for
from producer.server import EmbeddedRedis
from producer.synth.bids import BidsSubject, write_bids
from shared.settings import S3Source, Settings
from shared.store import LocalStore
from tests.bids_validator import errors, validate
from tests.buckets import LAB_REGION, Lab, admin, lab_endpoint, public_bucket
from tests.integration.harness import consumer_env, running_consumer, upload_dir, voxfleet

pytestmark = pytest.mark.filterwarnings("ignore:The legacy descoteaux07:PendingDeprecationWarning")

RAW = [
    BidsSubject("01", sessions=("1", "2")),
    BidsSubject("02", runs=2),
    BidsSubject("03", multishell=True),
    BidsSubject("04", broken="no-bval"),
    BidsSubject("05", broken="no-dwi"),
]
QSIPREP = [
    BidsSubject("01"),
    BidsSubject("02", segmentation=False),
    BidsSubject("03", sessions=("1", "2")),
    BidsSubject("04", broken="zero-voxel-size"),
]
CHEAP = {
    "dti": ("--param", "qc=false"),
    "tractography": ("--param", "shards=2", "--param", "qc=false"),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_endpoint(tmp_path_factory.mktemp("lab-s3") / "moto.log") as found:
        yield found


@pytest.fixture(scope="module")
def public(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The public bucket, holding ``raw/`` (BIDS) and ``qsiprep/`` (derivatives)."""
    name = public_bucket(s3_endpoint, f"openneuro-{uuid.uuid4().hex[:8]}")
    local = tmp_path_factory.mktemp("datasets")
    write_bids(LocalStore(local / "raw"), RAW, "small", seed=3)
    write_bids(LocalStore(local / "qsiprep"), QSIPREP, "small", layout="qsiprep", seed=3)
    for dataset in ("raw", "qsiprep"):
        upload_dir(local / dataset, name, dataset, s3_endpoint)
    return name


def _env(redis_url: str, s3_endpoint: str, public: str, lab: Lab, tmp: Path, queue: str) -> Any:
    """Consumers and the CLI with no credentials at all but the lab's profile: a public read
    that was signed would fail for want of a key, so the inputs can only be read unsigned."""
    sources = {
        f"s3://{public}/": {"anonymous": True, "endpoint_url": s3_endpoint},
        f"s3://{lab.bucket}/": {
            "endpoint_url": lab.endpoint,
            "region": LAB_REGION,
            "profile": "lab",
        },
    }
    env = consumer_env(
        redis_url,
        s3_endpoint,
        VOXFLEET_QUEUE=queue,
        VOXFLEET_DEFAULT_CLUSTER="local:1",
        VOXFLEET_S3_SOURCES=json.dumps(sources),
        AWS_SHARED_CREDENTIALS_FILE=str(lab.credentials_file(tmp / "credentials")),
        AWS_CONFIG_FILE=str(tmp / "no-config"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    return env


def _settings(redis_url: str, queue: str, s3_endpoint: str, public: str, lab: Lab) -> Settings:
    return Settings(
        broker_url=redis_url,  # type: ignore[arg-type]
        queue=queue,
        s3_sources={
            f"s3://{public}/": S3Source(anonymous=True, endpoint_url=s3_endpoint),
            f"s3://{lab.bucket}/": S3Source(
                endpoint_url=lab.endpoint, region=LAB_REGION, profile="lab"
            ),
        },
    )


def _download(lab: Lab, prefix: str, dest: Path) -> list[str]:
    client = admin(lab.endpoint, LAB_REGION, lab.key_id, lab.secret)
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=lab.bucket, Prefix=f"{prefix}/"
        )
        for o in page.get("Contents", [])
    ]
    for key in keys:
        path = dest / key[len(prefix) + 1 :]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(lab.bucket, key, str(path))
    return [k[len(prefix) + 1 :] for k in keys]


def _public_keys(s3_endpoint: str, public: str) -> set[str]:
    pages = admin(s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=public)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _campaign(
    env: dict[str, str], settings: Settings, name: str, pipeline: str, inputs: str, results: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Submit, wait; (the submit's JSON, the final job records by subject)."""
    sub = voxfleet(env, "campaign", "submit", name, pipeline, "--inputs", inputs,
                   "--results", results, "--json", *CHEAP[pipeline])  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    status = campaign_status(name, settings)
    records = wait_for([j.job_id for j in status.jobs], settings, timeout_s=600)
    by_subject = {j.subject: records[j.job_id] for j in status.jobs}
    return json.loads(sub.stdout), by_subject


def test_bids_and_qsiprep_campaigns_from_a_public_bucket_to_the_labs(
    redis_server: EmbeddedRedis,
    s3_endpoint: str,
    public: str,
    lab: Lab,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = f"bids-{uuid.uuid4().hex[:6]}"
    env = _env(redis_server.url, s3_endpoint, public, lab, tmp_path, queue)
    # This process reads campaign status from the lab's bucket too, with the same profile.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", env["AWS_SHARED_CREDENTIALS_FILE"])
    settings = _settings(redis_server.url, queue, s3_endpoint, public, lab)
    before = _public_keys(s3_endpoint, public)
    raw_results, qsi_results = "raw-voxfleet", "qsiprep-voxfleet"
    with ExitStack() as stack:
        for i in range(2):
            stack.enter_context(running_consumer(env, tmp_path / f"consumer-{i}.log"))
        raw, raw_jobs = _campaign(
            env, settings, "raw", "dti", f"s3://{public}/raw", f"s3://{lab.bucket}/{raw_results}"
        )
        qsi, qsi_jobs = _campaign(
            env,
            settings,
            "qsi",
            "tractography",
            f"s3://{public}/qsiprep",
            f"s3://{lab.bucket}/{qsi_results}",
        )

    # Raw BIDS: one job per session and per run; the two broken subjects named, left out.
    assert raw["enqueued"] == 5, raw
    assert sorted(raw_jobs) == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2",
                                "sub-03"]  # fmt: skip
    unusable = sorted(raw["unusable"])
    assert len(unusable) == 2, unusable
    assert unusable[0].startswith("sub-04: no .bval for sub-04/dwi/sub-04_dwi.nii.gz"), unusable
    assert unusable[1] == "sub-05: no diffusion data", unusable
    assert {r["state"] for r in raw_jobs.values()} == {"done"}, raw_jobs

    # QSIPrep: every series runs; the broken header fails its own job, in one line.
    assert qsi["enqueued"] == 5, qsi
    states = {s: r["state"] for s, r in qsi_jobs.items()}
    assert states == {"sub-01": "done", "sub-02": "done", "sub-03_ses-1": "done",
                      "sub-03_ses-2": "done", "sub-04": "failed"}, qsi_jobs  # fmt: skip
    reason = qsi_jobs["sub-04"]["reason"]
    assert "voxel sizes" in reason and "sub-04_space-T1w_desc-preproc_dwi" in reason, reason

    # Nothing was written to the public bucket.
    assert _public_keys(s3_endpoint, public) == before

    # What each job read and chose, from its committed manifest in the lab's bucket.
    raw_root, qsi_root = tmp_path / "raw-results", tmp_path / "qsi-results"
    raw_keys = _download(lab, raw_results, raw_root)
    qsi_keys = _download(lab, qsi_results, qsi_root)

    def summaries(root: Path, keys: list[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for key in keys:
            if key.endswith("/manifest.json") and not key.startswith("_"):
                manifest = json.loads((root / key).read_text())
                found[manifest["subject"]] = manifest["summary"]
        return found

    raw_summaries = summaries(raw_root, raw_keys)
    assert set(raw_summaries) == set(raw_jobs)
    assert {s["brain_mask_source"] for s in raw_summaries.values()} == {"median_otsu"}
    assert {s["layout"] for s in raw_summaries.values()} == {"bids"}
    qsi_summaries = summaries(qsi_root, qsi_keys)
    assert qsi_summaries["sub-01"]["wm_source"] == "segmentation"
    assert qsi_summaries["sub-02"]["wm_source"] == "fa"  # no segmentation: FA, recorded
    assert qsi_summaries["sub-01"]["segmentation"] == "sub-01/anat/sub-01_desc-aseg_dseg.nii.gz"

    # The BIDS names are where a user looks; the community's validator accepts both roots.
    assert "sub-01/ses-1/dwi/sub-01_ses-1_FA.nii.gz" in raw_keys
    assert "sub-02/dwi/sub-02_run-2_desc-brain_mask.nii.gz" in raw_keys
    assert "sub-03/dwi/sub-03_space-T1w_label-WM_mask.nii.gz" not in qsi_keys  # sessions
    assert "sub-03/ses-1/dwi/sub-03_ses-1_space-T1w_label-WM_mask.nii.gz" in qsi_keys
    # One tractogram per series (the shards merged), exported under its BIDS name too.
    assert any(k.startswith("sub-01/dwi/") and k.endswith("_tractogram.trx") for k in qsi_keys)
    for root in (raw_root, qsi_root):
        description = json.loads((root / "dataset_description.json").read_text())
        assert description["DatasetType"] == "derivative"
        assert description["GeneratedBy"][0]["Name"] == "voxfleet"
        assert errors(validate(root)) == []
