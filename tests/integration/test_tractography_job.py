"""End to end on real data: dipy's own ``small_64D`` (no aparc+aseg, so white matter from FA) in
the HCP layout on the S3 test server -> a tractography job in Redis -> a real consumer -> .trk
shards written by the Dask workers, listed in the manifest, each loading against the DWI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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


def serial_tracking(subject: Any, wm: np.ndarray, fa: np.ndarray) -> list[np.ndarray]:
    """The plain dipy calls on the same arrays: response, CSD, deterministic tracking."""
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
    from dipy.tracking.tracker import deterministic_tracking
    from dipy.tracking.utils import seeds_from_mask

    response, _ = response_from_mask_ssst(subject.gtab, subject.data, wm & (fa > 0.7))
    sh = ConstrainedSphericalDeconvModel(subject.gtab, response).fit(subject.data, mask=wm)
    tracked = deterministic_tracking(
        seeds_from_mask(wm, subject.affine, density=1),
        ThresholdStoppingCriterion(fa, 0.1),
        subject.affine,
        sh=sh.shm_coeff,
        min_len=10,
        max_len=250,
        step_size=0.5,
        max_angle=30,
    )
    return [np.asarray(s) for s in tracked]


def edge_subject(case: str, root: Path, synthetic: Path) -> tuple[Path, dict[str, Any]]:
    """``mask-fills-volume``: small_64D with a brain mask of ones (white matter from FA reaches
    every face). ``wm-touches-edge``: the synthetic subject, whose brain stem runs into the
    bottom slice as HCP's does (white matter from aparc+aseg)."""
    if case == "mask-fills-volume":
        subject = write_small64d(root / "full")
        mask_path = subject / "T1w/Diffusion/nodif_brain_mask.nii.gz"
        img = nib.load(mask_path)
        nib.save(nib.Nifti1Image(np.ones(img.shape, np.uint8), img.affine), mask_path)
        return subject, {"wm_source": "fa", "shards": 3, "output_format": "trx"}
    return synthetic, {"shards": 3}


@pytest.mark.parametrize("case", ["mask-fills-volume", "wm-touches-edge"])
def test_streamlines_reaching_the_edge_through_the_queue(
    case: str,
    tmp_path: Path,
    subject_dir: Path,
    bucket: str,
    s3_endpoint: str,
    settings: Settings,
) -> None:
    """Streamlines that run to the image's faces: the job commits, every shard loads with dipy's
    bounding-box check on and with trx-python, and the streamlines are the serial dipy calls'
    (points within 1e-4 mm; the edge points dipy's own check would refuse moved by at most the
    float32 margin, and counted)."""
    import trx.io as trx_io
    import trx.trx_file_memmap as trx_memmap

    from consumers.pipelines.base import PipelineContext
    from consumers.pipelines.diffusion import tractography
    from consumers.pipelines.diffusion.bounds import margin_voxels
    from shared.store import LocalStore
    from shared.timing import StageTimer

    local, params = edge_subject(case, tmp_path, subject_dir)
    input_uri = upload_dir(local, bucket, f"edge/{case}", s3_endpoint)
    spec = JobSpec(
        pipeline="tractography",
        input_uri=input_uri,
        results_uri=f"s3://{bucket}/edge-results",
        params=params,
    )
    submit([spec], settings)
    record = wait_for([spec.job_id], settings, timeout_s=300)[spec.job_id]
    assert record["state"] == "done", record

    store = open_store(spec.results_uri, settings)
    prefix = record["result"].removeprefix(f"{spec.results_uri}/").removesuffix("/manifest.json")
    manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/manifest.json"))
    job = store.child(prefix)
    summary = manifest.summary
    dwi = local / "T1w/Diffusion/data.nii.gz"
    ours: list[np.ndarray] = []
    for shard in summary["shards"]:
        path = tmp_path / "shards" / shard["key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(job.get_bytes(f"{manifest.attempt}/{shard['key']}"))
        sft = load_tractogram(str(path), str(dwi), bbox_valid_check=True)
        assert isinstance(sft, StatefulTractogram), f"{shard['key']} fails dipy's check"
        if path.suffix == ".trx":
            trx = trx_memmap.load(str(path))
            assert len(trx.streamlines) == shard["streamlines"]
            assert trx.to_sft().is_bbox_in_vox_valid()
            trx.close()
        else:
            back = trx_io.load_sft_with_reference(str(path), str(dwi), bbox_check=True)
            assert len(back.streamlines) == shard["streamlines"]
        assert len(sft.streamlines) == shard["streamlines"]
        ours += [np.asarray(s) for s in sft.streamlines]
    assert summary["edge_streamlines"]["cut"] == summary["edge_streamlines"]["dropped"] == 0

    # The same subject through the plain dipy calls (our loader, dipy's fits and tracker).
    ctx = PipelineContext(
        spec=spec.model_copy(update={"input_uri": str(local)}),
        inputs=LocalStore(local),
        out=LocalStore(tmp_path / "unused"),
        timer=StageTimer(),
        settings=Settings(),
        workdir=tmp_path / "work",
    )
    loaded = tractography.load(ctx)
    subject = loaded.subject
    from dipy.reconst.dti import TensorModel

    fa = np.nan_to_num(
        np.asarray(TensorModel(subject.gtab).fit(subject.data, mask=subject.mask).fa)
    )
    wm = loaded.wm if loaded.wm is not None else subject.mask & (fa > 0.2)
    dims = np.asarray(subject.shape[:3])
    faces = np.argwhere(wm)
    assert (faces.min(axis=0) == 0).any() or (faces.max(axis=0) == dims - 1).any()
    serial = serial_tracking(subject, wm, fa)
    assert len(ours) == len(serial) == summary["streamlines"] > 0
    inverse = np.linalg.inv(subject.affine)
    reached = 0
    allowed_mm = margin_voxels(subject.affine, subject.shape) * float(min(subject.zooms))
    for a, b in zip(ours, serial, strict=True):
        assert a.shape == b.shape
        vox = b @ inverse[:3, :3].T + inverse[:3, 3]
        distance = np.linalg.norm(a - b, axis=1)
        at_edge = ((vox < -0.5 + 1e-3) | (vox > dims - 0.5 - 1e-3)).any(axis=1)
        assert distance[~at_edge].max(initial=0.0) <= 1e-4
        assert distance[at_edge].max(initial=0.0) <= 1e-4 + 1.01 * allowed_mm
        reached += bool(((vox < 0.0) | (vox > dims - 1.0)).any())
    print(f"{case}: {len(ours)} streamlines, {reached} reach the outer half voxel of a face")
    assert reached > 0, "no streamline reached the edge: the case tests nothing"
