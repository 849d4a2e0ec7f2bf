"""End to end: synthetic subject in S3 -> `voxfleet enqueue dti` -> consumer -> results in S3."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.io.gradients import read_bvals_bvecs
from dipy.reconst.dti import TensorModel

from producer.jobs import wait_for
from producer.server import EmbeddedRedis
from shared.manifest import Manifest
from shared.settings import Settings
from shared.store import open_store
from tests.integration.conftest import SUBJECT
from tests.integration.harness import consumer_env, upload_dir, voxfleet

pytestmark = pytest.mark.usefixtures("consumer")


def test_dti_job_through_the_queue_equals_serial_dipy(
    subject_dir: Path,
    bucket: str,
    s3_endpoint: str,
    redis_server: EmbeddedRedis,
    settings: Settings,
) -> None:
    input_uri = upload_dir(subject_dir, bucket, f"hcp/{SUBJECT}", s3_endpoint)
    env = consumer_env(redis_server.url, s3_endpoint)
    results = f"s3://{bucket}/results"

    first = voxfleet(env, "enqueue", "dti", input_uri, "--results", results, "--json")
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["job_id"]
    record = wait_for([job_id], settings, timeout_s=240)[job_id]
    assert record["state"] == "done", record
    assert record["attempts"] == "1"

    # The manifest is the result: every listed file exists with its size and checksum.
    store = open_store(results, settings)
    manifest_uri = record["result"]
    prefix = manifest_uri.removeprefix(f"{results}/").removesuffix("/manifest.json")
    manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/manifest.json"))
    names = {f["key"].split("/", 1)[1] for f in manifest.files}
    assert {"fa.nii.gz", "md.nii.gz", "qc/fa.png", "timing.json"} <= names
    job = store.child(prefix)
    blobs = {}
    for entry in manifest.files:
        data = job.get_bytes(entry["key"])
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        blobs[entry["key"].split("/", 1)[1]] = data
    assert blobs["qc/fa.png"].startswith(b"\x89PNG\r\n\x1a\n")

    # Provenance: the software, every parameter, the objects read with their S3 ETags.
    origin = manifest.provenance
    assert origin["software"]["packages"]["dipy"] and origin["software"]["python"]
    assert origin["parameters"]["b0_threshold"] == 50.0  # a default, recorded
    read = {o["key"]: o for o in origin["inputs"]["objects"]}
    source = open_store(input_uri, settings)
    for key in read:
        assert read[key]["etag"] == source.stat(key).etag and read[key]["bytes"] > 0
    assert any(k.endswith("data.nii.gz") for k in read) and any(k.endswith("bvals") for k in read)
    assert origin["host"]["cluster"]["workers"] >= 1
    timing = json.loads(blobs["timing.json"])
    for stage in ("queue_wait", "load", "cluster_acquire", "dti", "cluster_release"):
        assert stage in timing["stages_s"], stage
    assert timing["cluster"]["workers"] == 2

    # FA equals dipy's serial fit on the same data.
    dwi = nib.load(subject_dir / "T1w/Diffusion/data.nii.gz")
    data = np.asarray(dwi.get_fdata(dtype=np.float32))
    mask = np.asarray(nib.load(subject_dir / "T1w/Diffusion/nodif_brain_mask.nii.gz").dataobj) > 0
    bvals, bvecs = read_bvals_bvecs(
        str(subject_dir / "T1w/Diffusion/bvals"), str(subject_dir / "T1w/Diffusion/bvecs")
    )
    serial = TensorModel(gradient_table(bvals, bvecs=bvecs, b0_threshold=50)).fit(data, mask=mask)
    fa_img = nib.Nifti1Image.from_bytes(gzip_decompress(blobs["fa.nii.gz"]))
    np.testing.assert_allclose(fa_img.affine, dwi.affine)
    fa = np.asarray(fa_img.dataobj, dtype=np.float64)
    assert np.abs(fa - np.nan_to_num(serial.fa)).max() <= 1e-6

    # `voxfleet status` shows the job with its stages.
    status = voxfleet(env, "status", job_id, "--json")
    shown = json.loads(status.stdout)
    assert status.returncode == 0 and shown["state"] == "done"
    assert shown["provenance"] == origin
    text = voxfleet(env, "status", job_id).stdout
    assert (
        "software: voxfleet" in text and "dipy" in text and f"input: {len(read)} object(s)" in text
    )

    # The same work enqueued again runs once: the second job reports the existing commit.
    second = voxfleet(env, "enqueue", "dti", input_uri, "--results", results, "--json")
    second_id = json.loads(second.stdout)["job_id"]
    again = wait_for([second_id], settings, timeout_s=120)[second_id]
    assert again["state"] == "done" and again["reason"] == "already committed"
    assert again["result"] == manifest_uri
    assert Manifest.model_validate_json(store.get_bytes(f"{prefix}/manifest.json")) == manifest
    assert [k for k in store.list(prefix) if k.endswith("manifest.json")] == [
        f"{prefix}/manifest.json"
    ]
    assert (
        len({k.split("/")[3] for k in store.list(prefix) if k.count("/") > 3}) == 1
    )  # one attempt


def gzip_decompress(data: bytes) -> bytes:
    import gzip

    return gzip.GzipFile(fileobj=io.BytesIO(data)).read()
