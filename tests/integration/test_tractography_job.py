"""End to end on real data: dipy's own ``small_64D`` (no aparc+aseg, so white matter from FA) in
the HCP layout on the S3 test server -> a tractography job in Redis -> a real consumer -> .trk
shards written by the Dask workers, listed in the manifest, each loading against the DWI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.data import get_fnames
from dipy.io.stateful_tractogram import StatefulTractogram
from dipy.io.streamline import load_tractogram

from producer.jobs import submit, wait_for
from shared.jobspec import JobSpec
from shared.manifest import Manifest
from shared.settings import Settings
from shared.store import open_store
from tests.integration.harness import upload_dir

pytestmark = pytest.mark.usefixtures("consumer")
STAGES = (
    "queue_wait",
    "cluster_acquire",
    "load",
    "dti",
    "mask",
    "response",
    "csd",
    "tracking",
    "publish",
)


def write_small64d(root: Path) -> Path:
    """small_64D as an HCP subject: its 64 directions and b0, a brain mask from the b0."""
    fdata, fbvals, fbvecs = get_fnames(name="small_64D")
    img = nib.load(fdata)
    data = np.asarray(img.dataobj, dtype=np.float32)
    diff = root / "T1w" / "Diffusion"
    diff.mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, img.affine), diff / "data.nii.gz")
    b0 = data[..., 0]
    mask = (b0 > np.percentile(b0, 30)).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, img.affine), diff / "nodif_brain_mask.nii.gz")
    (diff / "bvals").write_text(Path(fbvals).read_text())
    bvecs = np.loadtxt(fbvecs)
    bvecs = bvecs if bvecs.shape[0] == 3 else bvecs.T
    (diff / "bvecs").write_text(
        "\n".join(" ".join(f"{v:.8f}" for v in row) for row in bvecs) + "\n"
    )
    return root


def test_small64d_tractography_through_the_queue(
    tmp_path: Path, bucket: str, s3_endpoint: str, settings: Settings
) -> None:
    subject_dir = write_small64d(tmp_path / "small64d")
    input_uri = upload_dir(subject_dir, bucket, "dipy/small64d", s3_endpoint)
    results = f"s3://{bucket}/results"
    spec = JobSpec(
        pipeline="tractography",
        input_uri=input_uri,
        results_uri=results,
        params={"wm_source": "fa", "shards": 3},
    )
    submit([spec], settings)
    record = wait_for([spec.job_id], settings, timeout_s=240)[spec.job_id]
    assert record["state"] == "done", record

    store = open_store(results, settings)
    prefix = record["result"].removeprefix(f"{results}/").removesuffix("/manifest.json")
    manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/manifest.json"))
    job = store.child(prefix)
    listed = {f["key"]: f for f in manifest.files}

    # Every shard in the summary is a listed file with its size and checksum, and loads with
    # dipy against the DWI with the bounding-box check on.
    summary = manifest.summary
    shards = summary["shards"]
    assert len(shards) == 3 and summary["seeds"] == shards[-1]["seed_stop"] > 0
    assert summary["streamlines"] == sum(s["streamlines"] for s in shards) > 0
    assert summary["wm_source"] == "fa" and summary["response"]["voxels"] > 0
    dwi = subject_dir / "T1w/Diffusion/data.nii.gz"
    for shard in shards:
        entry = listed[f"{manifest.attempt}/{shard['key']}"]
        blob = job.get_bytes(entry["key"])
        assert len(blob) == entry["bytes"] == shard["bytes"]
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"] == shard["sha256"]
        path = tmp_path / shard["key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        sft = load_tractogram(str(path), str(dwi), bbox_valid_check=True)
        assert isinstance(sft, StatefulTractogram), f"{shard['key']} does not load"
        assert len(sft.streamlines) == shard["streamlines"]

    names = {key.split("/", 1)[1] for key in listed}
    assert {"fa.nii.gz", "wm_mask.nii.gz", "qc/tractography.png", "timing.json"} <= names
    timing = json.loads(job.get_bytes(f"{manifest.attempt}/timing.json"))
    for stage in STAGES:
        assert stage in timing["stages_s"], stage
    assert timing["cluster"]["workers"] == 2
    assert len(timing["tracking_workers_busy_s"]) >= 1
