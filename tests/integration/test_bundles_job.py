"""A tractography job chained into bundles, through the queue: a small synthetic subject on the S3
test server is tracked, its committed result is segmented against dipy's own bundles (subject
1 of minimal_bundles, uploaded as an atlas) by the follow-up job that the consumer enqueues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.jobs import ledger_for, submit, wait_for
from producer.synth.bundles import read_minimal_bundles, write_atlas
from shared.jobspec import JobSpec
from shared.manifest import Manifest
from shared.settings import Settings
from shared.store import open_store
from tests.integration.harness import upload_dir

pytestmark = pytest.mark.usefixtures("consumer")

# The follow-up's registration: one similarity SLR, and a small-cluster cut suited to a
# subject of a few thousand streamlines (dipy's default of 50 assumes a real brain).
FOLLOWUP = {"slr_transform": "similarity", "slr_progressive": False, "slr_min_cluster": 5}


# Slow: three jobs, three cluster starts. The main suite's chain is test_tractometry_campaign's
# (on one shared cluster); this one adds dipy's own bundles as the atlas and a resubmission of
# the same job id, whose follow-ups must not be sent twice.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tractography_chains_into_bundles(
    subject_dir: Path, bucket: str, s3_endpoint: str, settings: Settings
) -> None:
    input_uri = upload_dir(subject_dir, bucket, "hcp/100307", s3_endpoint)
    subjects, header = read_minimal_bundles()
    atlas_uri = f"s3://{bucket}/atlas/minimal_sub1"
    write_atlas(open_store(atlas_uri, settings), subjects[1], header)
    results = f"s3://{bucket}/results"
    spec = JobSpec(
        pipeline="tractography",
        input_uri=input_uri,
        results_uri=results,
        params={"shards": 2, "bundles_atlas": atlas_uri, "bundles_params": FOLLOWUP},
    )
    # The follow-up does not change the tractogram, so it is not part of the key.
    plain = JobSpec(
        pipeline="tractography", input_uri=input_uri, results_uri=results, params={"shards": 2}
    )
    assert spec.key == plain.key
    submit([spec], settings)
    tract = wait_for([spec.job_id], settings, timeout_s=600)[spec.job_id]
    assert tract["state"] == "done", tract
    assert tract["followups"] == [f"{spec.job_id}-bundles"]

    follow_id = tract["followups"][0]
    record = wait_for([follow_id], settings, timeout_s=600)[follow_id]
    assert record["state"] == "done", record
    store = open_store(results, settings)
    tract_prefix = tract["result"].removeprefix(f"{results}/").removesuffix("/manifest.json")
    prefix = record["result"].removeprefix(f"{results}/").removesuffix("/manifest.json")
    manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/manifest.json"))
    assert manifest.pipeline == "bundles" and manifest.subject == "100307"
    assert manifest.input_uri == f"{results}/{tract_prefix}"
    assert manifest.params["atlas"] == atlas_uri and manifest.params["slr_min_cluster"] == 5

    summary = manifest.summary
    tract_manifest = Manifest.model_validate_json(store.get_bytes(f"{tract_prefix}/manifest.json"))
    assert summary["tractography"]["job_key"] == tract_manifest.job_key
    assert summary["streamlines"] == tract_manifest.summary["streamlines"] > 0
    names = {key.split("/", 1)[1] for key in (f["key"] for f in manifest.files)}
    assert {"qc/bundles.png", "timing.json"} <= names
    for bundle in summary["bundles"]:
        assert f"bundles/{bundle['name']}.trk" in names
        assert f"bundles/{bundle['name']}.indices.npy" in names
    assert sorted(b["name"] for b in summary["bundles"]) == sorted(subjects[1])
    # The third step: a profiles job over the bundles, from the tractography's FA and MD maps.
    assert record["followups"] == [f"{follow_id}-profiles"]
    profile_id = record["followups"][0]
    profiled_record = wait_for([profile_id], settings, timeout_s=600)[profile_id]
    assert profiled_record["state"] == "done", profiled_record
    profile_prefix = profiled_record["result"].removeprefix(f"{results}/")
    profiles = Manifest.model_validate_json(store.get_bytes(profile_prefix))
    assert profiles.pipeline == "profiles" and profiles.input_uri == f"{results}/{prefix}"
    assert profiles.summary["metrics"] == ["fa", "md"]
    profiled = [b["name"] for b in summary["bundles"] if b["streamlines"] >= 2]
    assert profiles.summary["bundles"] == sorted(profiled)
    written = {f["key"].split("/", 1)[1] for f in profiles.files}
    assert ("profiles.parquet" in written) == bool(profiled)
    print("chained:", json.dumps([(b["name"], b["streamlines"]) for b in summary["bundles"]]))
    timing = json.loads(store.get_bytes(f"{prefix}/{manifest.attempt}/timing.json"))
    for stage in ("load", "register", "cluster", "recognize", "write", "publish"):
        assert stage in timing["stages_s"], stage
    assert len(timing["recognize_workers_busy_s"]) >= 1

    # Enqueued again, the tractography job is skipped as committed and its follow-up, which
    # exists, is not sent twice.
    submit([spec], settings)
    record = wait_for([spec.job_id], settings, timeout_s=120)[spec.job_id]
    assert record["state"] == "done" and record["reason"] == "already committed"
    follow = ledger_for(settings).get(follow_id)
    assert follow is not None and follow["state"] == "done" and follow["attempts"] == "1"
