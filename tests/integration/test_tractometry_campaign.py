"""The tractometry recipe end to end, as a lab runs it: three synthetic subjects in the HCP
layout on the S3 test server and an atlas of the phantom's own tracts (``synth.atlas``); one
``campaign submit ... tractography --param bundles_atlas=...``; real consumers track each
subject, segment its bundles and profile them, three committed jobs per subject; then
``campaign results`` (a row per job, and the long table of profiles), ``campaign report`` with
the profile plot, and ``--only-missing`` resuming a chain whose last step was lost."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from dipy.io.stateful_tractogram import StatefulTractogram
from dipy.io.streamline import load_tractogram
from matplotlib.image import imread

from producer.jobs import wait_for
from producer.server import EmbeddedRedis
from producer.synth.atlas import write_tract_atlas
from producer.synth.hcp import write_subjects
from shared.manifest import Manifest
from shared.settings import Settings
from shared.store import LocalStore, open_store
from tests.integration.harness import consumer_env, running_consumer, upload_dir, voxfleet

# Registration suited to a phantom of a few thousand streamlines (as in test_bundles_job).
BUNDLES = {"slr_transform": "similarity", "slr_progressive": False, "slr_min_cluster": 5}
PIPELINES = ["tractography", "bundles", "profiles"]


def _manifest(store: object, row: dict[str, object], results: str) -> Manifest:
    key = str(row["result_uri"]).removeprefix(f"{results}/")
    return Manifest.model_validate_json(store.get_bytes(key))  # type: ignore[attr-defined]


@pytest.mark.timeout(900)
def test_tractometry_campaign_of_three_subjects(
    dask_address: str,
    redis_server: EmbeddedRedis,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    subjects = write_subjects(LocalStore(tmp_path / "hcp"), 3, size="small")
    inputs = upload_dir(tmp_path / "hcp", bucket, "tractometry/hcp", s3_endpoint)
    queue = f"tm-{uuid.uuid4().hex[:6]}"
    env = consumer_env(
        redis_server.url, s3_endpoint, VOXFLEET_QUEUE=queue, VOXFLEET_DEFAULT_CLUSTER=dask_address
    )
    settings = Settings(broker_url=redis_server.url, s3_endpoint_url=s3_endpoint, queue=queue)
    atlas = f"s3://{bucket}/tractometry/atlas"
    write_tract_atlas(open_store(atlas, settings))
    results = f"s3://{bucket}/tractometry/derivatives"
    name = f"tractometry-{uuid.uuid4().hex[:6]}"
    submit = ["campaign", "submit", name, "tractography", "--inputs", inputs, "--results", results,
              "--param", f"bundles_atlas={atlas}", "--param",
              f"bundles_params={json.dumps(BUNDLES)}", "--json"]  # fmt: skip

    from producer.campaign import campaign_status

    with running_consumer(env, tmp_path / "consumer.log"):
        made = voxfleet(env, *submit)
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["enqueued"] == 3
        first = [job.job_id for job in campaign_status(name, settings).jobs]
        # Each step is its own job, named after the first: wait for the last of every chain.
        last = [f"{job_id}-bundles-profiles" for job_id in first]
        done = wait_for(first, settings, timeout_s=600)
        assert {r["state"] for r in done.values()} == {"done"}, done
        done = wait_for(last, settings, timeout_s=600)
        assert {r["state"] for r in done.values()} == {"done"}, done

        # One table for the campaign: three rows per subject, every step committed.
        table_path = tmp_path / "results.parquet"
        made = voxfleet(env, "campaign", "results", name, "--out", str(table_path))
        assert made.returncode == 0, made.stderr
        rows = pq.read_table(table_path).to_pylist()
        assert [(r["subject"], r["pipeline"]) for r in rows] == [
            (s, p) for s in subjects for p in PIPELINES
        ]
        assert {r["state"] for r in rows} == {"done"}
        store = open_store(results, settings)
        profiled_total = 0
        for subject in subjects:
            tract, bundles, profiles = (r for r in rows if r["subject"] == subject)
            t_manifest = _manifest(store, tract, results)
            assert tract["streamlines"] == t_manifest.summary["streamlines"] > 1000
            assert tract["tractogram.streamlines"] == tract["streamlines"]
            b_manifest = _manifest(store, bundles, results)
            assert b_manifest.input_uri == str(tract["result_uri"]).removesuffix("/manifest.json")
            assert bundles["streamlines"] == tract["streamlines"]
            found = {b["name"]: b["streamlines"] for b in b_manifest.summary["bundles"]}
            assert bundles["recognized"] == sum(found.values())
            # The callosum, the phantom's largest tract, is found in every subject.
            assert found["CC"] >= 50, found
            p_manifest = _manifest(store, profiles, results)
            assert p_manifest.input_uri == str(bundles["result_uri"]).removesuffix("/manifest.json")
            assert p_manifest.summary["bundles"] == sorted(n for n, k in found.items() if k >= 2)
            assert profiles["nodes"] == 100
            profiled_total += len(p_manifest.summary["bundles"])
            # Every step says what made it.
            assert {r["voxfleet"] for r in (tract, bundles, profiles)} != {None}
            assert p_manifest.provenance["software"]["packages"]["dipy"]

        # The merged tractogram of one subject opens in the field's readers and holds exactly
        # the shards' streamlines.
        _check_merged(store, t_manifest, tmp_path / "hcp" / subjects[-1], tmp_path)

        # The long table of profiles: every subject, bundle, metric and node.
        long_path = tmp_path / "profiles.csv"
        made = voxfleet(env, "campaign", "results", name, "--out", str(long_path), "--profiles")
        assert made.returncode == 0, made.stderr
        import csv

        with long_path.open() as fh:
            long = list(csv.DictReader(fh))
        assert len(long) == profiled_total * 2 * 100
        assert {r["subject"] for r in long} == set(subjects)
        assert {r["metric"] for r in long} == {"fa", "md"}
        cc_fa = [float(r["value"]) for r in long if r["bundle"] == "CC" and r["metric"] == "fa"]
        assert len(cc_fa) == 300 and 0.3 < float(np.mean(cc_fa)) < 0.95

        # The report draws the profiles across subjects.
        out = tmp_path / "report"
        made = voxfleet(env, "campaign", "report", name, "--out", str(out))
        assert made.returncode == 0, made.stderr
        assert "profiles.png" in (out / "index.html").read_text()
        assert imread(out / "profiles.png").ndim == 3

        # The last step of one chain is lost: --only-missing enqueues that subject alone, its
        # tractography and bundles are skipped as committed, and its profiles run again.
        lost = next(r for r in rows if r["subject"] == subjects[1] and r["pipeline"] == "profiles")
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        s3.delete_object(Bucket=bucket, Key=str(lost["result_uri"]).split("/", 3)[3])
        again = voxfleet(env, *submit, "--only-missing")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["enqueued"] == 1, again.stdout
        assert json.loads(again.stdout)["skipped"] == 2
        status = campaign_status(name, settings)
        rerun = [j.job_id for j in status.jobs if j.job_id not in first]
        assert len(rerun) == 1
        records = wait_for([f"{rerun[0]}-bundles-profiles"], settings, timeout_s=300)
        assert {r["state"] for r in records.values()} == {"done"}, records
        records = wait_for([rerun[0], f"{rerun[0]}-bundles"], settings, timeout_s=60)
        assert {r["reason"] for r in records.values()} == {"already committed"}
        assert store.exists(str(lost["result_uri"]).removeprefix(f"{results}/"))


def _check_merged(store: object, manifest: Manifest, subject_dir: Path, tmp_path: Path) -> None:
    from trx.trx_file_memmap import load as load_trx

    prefix = f"{manifest.subject}/tractography/{manifest.job_key[:16]}/{manifest.attempt}"
    merged = tmp_path / "tractogram.trx"
    merged.write_bytes(store.get_bytes(f"{prefix}/tractogram.trx"))  # type: ignore[attr-defined]
    shards = []
    for shard in manifest.summary["shards"]:
        path = tmp_path / shard["key"].replace("/", "_")
        path.write_bytes(store.get_bytes(f"{prefix}/{shard['key']}"))  # type: ignore[attr-defined]
        shards.append(load_tractogram(str(path), "same", bbox_valid_check=False))
    expected = [np.asarray(s, np.float32) for sft in shards for s in sft.streamlines]
    trx = load_trx(str(merged))
    try:
        theirs = [np.array(s) for s in trx.streamlines]
    finally:
        trx.close()
    assert [len(a) for a in theirs] == [len(b) for b in expected]
    assert max(float(np.abs(a - b).max()) for a, b in zip(theirs, expected, strict=True)) <= 1e-5
    dwi = subject_dir / "T1w" / "Diffusion" / "data.nii.gz"
    sft = load_tractogram(str(merged), str(dwi), bbox_valid_check=True)
    assert isinstance(sft, StatefulTractogram) and len(sft.streamlines) == len(expected)
