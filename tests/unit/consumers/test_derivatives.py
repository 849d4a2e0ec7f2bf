"""Exporting committed BIDS jobs as BIDS-Derivatives, checked by the BIDS validator itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from consumers.derivatives import export
from consumers.publish import publish, upload_all
from consumers.runner import execute
from producer.campaign import PLANS
from shared.jobspec import JobSpec
from shared.manifest import Manifest
from shared.settings import Settings
from shared.store import LocalStore
from tests.bids_validator import errors, validate

RAW = "s3://bucket/ds"
QSIPREP = "/data/qsiprep"
SES1 = f"{RAW}/sub-01/ses-1/dwi/sub-01_ses-1_run-2_dwi.nii.gz"
SES2 = f"{RAW}/sub-01/ses-2/dwi/sub-01_ses-2_dwi.nii.gz"
SUB2 = f"{RAW}/sub-02/dwi/sub-02_dwi.nii.gz"  # subject id sub-02: its jobs sit in sub-02/
QSI = f"{QSIPREP}/sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz"
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def nifti(path: Path, data: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, path)
    return path


def commit(
    results: LocalStore,
    scratch: Path,
    pipeline: str,
    input_uri: str,
    summary: dict[str, Any],
    params: dict[str, Any] | None = None,
    tractogram: bool = False,
) -> Manifest:
    """A job committed the way the consumer commits: its maps uploaded, then the manifest."""
    spec = JobSpec(
        pipeline=pipeline, input_uri=input_uri, results_uri=str(results.root), params=params or {}
    )
    rng = np.random.default_rng(len(input_uri))
    brain = np.zeros((6, 7, 5), dtype=np.uint8)
    brain[1:5, 1:6, 1:4] = 1
    fa = (rng.random(brain.shape) * brain).astype(np.float32)
    folder = scratch / spec.key[:16]
    folder.mkdir(parents=True)
    uploads = {
        "fa.nii.gz": nifti(folder / "fa.nii.gz", fa),
        "brain_mask.nii.gz": nifti(folder / "brain_mask.nii.gz", brain),
        "qc/fa.png": folder / "fa.png",
    }
    uploads["qc/fa.png"].write_bytes(b"\x89PNG")
    if pipeline == "dti":
        uploads["md.nii.gz"] = nifti(folder / "md.nii.gz", fa * np.float32(1e-3))
    else:
        uploads["wm_mask.nii.gz"] = nifti(folder / "wm.nii.gz", (fa > 0.2).astype(np.uint8))
    if tractogram:
        uploads["tractogram.trx"] = folder / "tractogram.trx"
        uploads["tractogram.trx"].write_bytes(b"trx" * 100)
    if summary.get("brain_mask_source") == "layout":
        del uploads["brain_mask.nii.gz"]  # QSIPrep's own mask is the input's, not an output
    attempt = "a" + spec.key[:11]
    job = results.child(spec.result_prefix)
    files = upload_all(job.child(attempt), uploads)
    if pipeline == "tractography":
        files.append(job.child(attempt).put_bytes("shards/sl-0000.trk", b"shard"))
    return publish(results, spec, attempt, files, summary, {"wall_s": 1.0}).manifest


def raw_results(root: Path) -> tuple[LocalStore, list[Manifest]]:
    results = LocalStore(root / "results")
    results.put_bytes(f"{PLANS}/campaign-1.json", b"{}")  # what campaign submit keeps there
    raw = {"brain_mask_source": "median_otsu"}
    made = [
        commit(results, root / "s", "tractography", SES1, {**raw, "wm_source": "fa"}, None, True),
        commit(results, root / "s", "dti", SES2, raw),
        commit(results, root / "s", "dti", SUB2, raw, {"fit_method": "OLS"}),
    ]
    return results, made


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_raw_bids_results_are_a_valid_derivatives_dataset(tmp_path: Path) -> None:
    results, made = raw_results(tmp_path)
    written = [export(results, m) for m in made]
    base1, base2 = "sub-01/ses-1/dwi/sub-01_ses-1_run-2", "sub-01/ses-2/dwi/sub-01_ses-2"
    assert sorted(written[0]) == sorted(
        f"{base1}_{name}"
        for name in (
            "FA.nii.gz",
            "FA.json",
            "desc-brain_mask.nii.gz",
            "desc-brain_mask.json",
            "label-WM_mask.nii.gz",
            "label-WM_mask.json",
            "tract-wholebrain_track-det_tractogram.trx",
            "tract-wholebrain_track-det_tractogram.json",
        )
    )
    assert f"{base2}_ADC.nii.gz" in written[1]
    assert "sub-02/dwi/sub-02_FA.nii.gz" in written[2]
    # The copies are the committed maps, byte for byte.
    job = results.child("sub-01_ses-2/dti/" + made[1].job_key[:16])
    assert results.get_bytes(f"{base2}_ADC.nii.gz") == job.get_bytes(f"{made[1].attempt}/md.nii.gz")
    sidecar = json.loads(results.get_bytes(f"{base1}_label-WM_mask.json"))
    assert sidecar["Type"] == "ROI" and "FA above 0.2" in sidecar["Description"]
    assert sidecar["Voxfleet"]["JobKey"] == made[0].job_key

    # What the validator takes on trust (any string passes as a URI): Sources are BIDS URIs
    # into a dataset that DatasetLinks names, and its value is a URI.
    links = json.loads(results.get_bytes("dataset_description.json"))["DatasetLinks"]
    assert links == {"raw": RAW}
    for key in (k for k in results.list() if k.endswith(".json") and "/dwi/" in k):
        for source in json.loads(results.get_bytes(key))["Sources"]:
            assert source.startswith("bids:raw:sub-"), (key, source)

    issues = validate(results.root)
    assert errors(issues) == []
    # Only what a BIDS dataset is asked for and voxfleet cannot know (its authors) is left.
    assert {i["code"] for i in issues} <= {"TOO_FEW_AUTHORS"}


def test_the_validator_reads_the_exported_files(tmp_path: Path) -> None:
    """A control: a sidecar without a field BIDS requires is an error, so the clean runs above
    are the validator's verdict on the maps, not files it skipped."""
    results, made = raw_results(tmp_path)
    export(results, made[1])
    key = "sub-01/ses-2/dwi/sub-01_ses-2_FA.json"
    broken = json.loads(results.get_bytes(key))
    del broken["SkullStripped"]
    results.put_bytes(key, json.dumps(broken).encode())
    assert errors(validate(results.root)) == [f"SIDECAR_KEY_REQUIRED /{key[:-5]}.nii.gz"]


def test_qsiprep_results_are_a_valid_derivatives_dataset(tmp_path: Path) -> None:
    results = LocalStore(tmp_path / "results")
    seg = "sub-01/anat/sub-01_desc-aseg_dseg.nii.gz"
    summary = {"brain_mask_source": "layout", "wm_source": "segmentation", "segmentation": seg}
    made = commit(results, tmp_path / "s", "tractography", QSI, summary)
    written = export(results, made)
    assert sorted(written) == [
        "sub-01/dwi/sub-01_space-T1w_FA.json",
        "sub-01/dwi/sub-01_space-T1w_FA.nii.gz",
        "sub-01/dwi/sub-01_space-T1w_label-WM_mask.json",
        "sub-01/dwi/sub-01_space-T1w_label-WM_mask.nii.gz",
    ]
    description = json.loads(results.get_bytes("dataset_description.json"))
    assert description["DatasetLinks"] == {"qsiprep": "file:///data/qsiprep"}
    # sub-01/tractography/ (the job) beside sub-01/dwi/ (its BIDS names): .bidsignore covers it.
    assert (results.root / "sub-01" / "tractography").is_dir()
    assert errors(validate(results.root)) == []


def test_export_is_idempotent(tmp_path: Path) -> None:
    results, made = raw_results(tmp_path)
    first = [export(results, m) for m in made]
    before = snapshot(results.root)
    again = [export(results, m) for m in made]
    assert again == first
    assert snapshot(results.root) == before  # same objects, none even rewritten


def test_a_name_owned_by_another_job_is_not_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results, made = raw_results(tmp_path)
    for m in made:
        export(results, m)
    before = snapshot(results.root)
    # The same series with other parameters: a second parameter set for the same names.
    other = commit(
        results,
        tmp_path / "s2",
        "dti",
        SES2,
        {"brain_mask_source": "median_otsu"},
        {"fit_method": "NLLS"},
    )
    assert other.job_key != made[1].job_key
    with caplog.at_level(logging.WARNING, logger="consumers.derivatives"):
        assert export(results, other) == []
    assert "belongs to job" in caplog.text and "one parameter set" in caplog.text
    after = snapshot(results.root)
    assert {k: v for k, v in after.items() if k in before} == before
    # dti's FA is the tractography job's name too: the first to export keeps it; MD is new.
    dti_here = commit(results, tmp_path / "s3", "dti", SES1, {"brain_mask_source": "median_otsu"})
    exported = export(results, dti_here)
    assert exported == [
        "sub-01/ses-1/dwi/sub-01_ses-1_run-2_ADC.nii.gz",
        "sub-01/ses-1/dwi/sub-01_ses-1_run-2_ADC.json",
    ]
    fa = json.loads(results.get_bytes("sub-01/ses-1/dwi/sub-01_ses-1_run-2_FA.json"))
    assert fa["Voxfleet"]["JobKey"] == made[0].job_key


def test_a_root_describing_another_source_dataset_is_left_alone(tmp_path: Path) -> None:
    results, made = raw_results(tmp_path)
    export(results, made[0])
    qsiprep = commit(results, tmp_path / "q", "dti", QSI, {"brain_mask_source": "layout"})
    assert export(results, qsiprep) == []
    assert not results.exists("sub-01/dwi/sub-01_space-T1w_FA.nii.gz")


def test_hcp_and_other_pipelines_export_nothing(tmp_path: Path) -> None:
    results = LocalStore(tmp_path / "results")
    hcp = commit(results, tmp_path / "s", "dti", "/data/hcp/100307", {})
    assert export(results, hcp) == []
    assert not results.exists("dataset_description.json")
    assert not results.exists(".bidsignore")


def test_a_skipped_job_exports_again(tmp_path: Path) -> None:
    """The runner exports after every outcome: a retry after a failed export finds the
    manifest and exports what the first delivery could not."""
    results = LocalStore(tmp_path / "results")
    made = commit(results, tmp_path / "s", "dti", SES2, {"brain_mask_source": "median_otsu"})
    spec = JobSpec(pipeline="dti", input_uri=SES2, results_uri=str(results.root))
    assert spec.key == made.job_key
    outcome = execute(spec, Settings())
    assert outcome.state == "skipped"
    assert "sub-01/ses-2/dwi/sub-01_ses-2_FA.nii.gz" in outcome.derivatives
    assert results.exists("sub-01/ses-2/dwi/sub-01_ses-2_FA.nii.gz")
    assert results.exists("dataset_description.json")
