"""BIDS-Derivatives naming: which entities a name keeps, sessions and runs, QSIPrep's space."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

import pytest

from producer.campaign import PLANS
from shared import derivatives
from shared.derivatives import Output, Series
from shared.manifest import Manifest
from shared.params import PIPELINE_PARAMS

RAW = "s3://bucket/ds"
QSIPREP = "/data/qsiprep"


def manifest(input_uri: str, pipeline: str, names: list[str], **summary: Any) -> Manifest:
    return Manifest(
        job_key="k" * 64,
        job_id="job-1",
        pipeline=pipeline,
        pipeline_version=PIPELINE_PARAMS[pipeline].version,
        subject="sub-01",
        input_uri=input_uri,
        params={},
        attempt="att1",
        files=[{"key": f"att1/{n}", "bytes": 10, "sha256": "0" * 64} for n in names],
        summary=summary,
    )


def names(outputs: list[Output]) -> dict[str, str]:
    return {o.source.split("/", 1)[1]: o.key for o in outputs}


@pytest.mark.parametrize(
    ("key", "stem"),
    [
        ("sub-01/dwi/sub-01_dwi.nii.gz", "sub-01/dwi/sub-01"),
        ("sub-01/ses-1/dwi/sub-01_ses-1_run-2_dwi.nii.gz", "sub-01/ses-1/dwi/sub-01_ses-1_run-2"),
        (
            "sub-01/ses-pre/dwi/sub-01_ses-pre_acq-mb_rec-mag_dir-PA_run-02_dwi.nii.gz",
            "sub-01/ses-pre/dwi/sub-01_ses-pre_acq-mb_rec-mag_dir-PA_run-02",
        ),
        # QSIPrep: the space stays (the maps are on its grid), desc-preproc goes.
        (
            "sub-01/dwi/sub-01_run-1_space-T1w_desc-preproc_dwi.nii.gz",
            "sub-01/dwi/sub-01_run-1_space-T1w",
        ),
        (
            "sub-01/ses-2/dwi/sub-01_ses-2_acq-hcp_space-ACPC_desc-preproc_dwi.nii.gz",
            "sub-01/ses-2/dwi/sub-01_ses-2_acq-hcp_space-ACPC",
        ),
    ],
)
def test_names_keep_the_series_entities_and_space_and_drop_desc(key: str, stem: str) -> None:
    root = QSIPREP if "desc-preproc" in key else RAW
    series = Series.of(f"{root}/{key}")
    assert series is not None
    assert series.layout == ("qsiprep" if root == QSIPREP else "bids")
    found = names(derivatives.outputs(series, manifest(f"{root}/{key}", "dti", ["fa.nii.gz"]), ""))
    assert found == {"fa.nii.gz": f"{stem}_FA.nii.gz"}


def test_every_map_of_both_pipelines_has_its_name() -> None:
    uri = f"{RAW}/sub-01/ses-1/dwi/sub-01_ses-1_run-2_dwi.nii.gz"
    series = Series.of(uri)
    assert series is not None
    base = "sub-01/ses-1/dwi/sub-01_ses-1_run-2"
    dti = manifest(uri, "dti", ["fa.nii.gz", "md.nii.gz", "brain_mask.nii.gz", "qc/fa.png"])
    assert names(derivatives.outputs(series, dti, "")) == {
        "fa.nii.gz": f"{base}_FA.nii.gz",
        "md.nii.gz": f"{base}_ADC.nii.gz",
        "brain_mask.nii.gz": f"{base}_desc-brain_mask.nii.gz",
    }
    listed = ["fa.nii.gz", "wm_mask.nii.gz", "shards/sl-0000.trk", "timing.json"]
    tracked = manifest(uri, "tractography", [*listed, "tractogram.trx"], wm_source="fa")
    assert names(derivatives.outputs(series, tracked, "")) == {
        "fa.nii.gz": f"{base}_FA.nii.gz",
        "wm_mask.nii.gz": f"{base}_label-WM_mask.nii.gz",
        "tractogram.trx": f"{base}_tract-wholebrain_track-det_tractogram.trx",
    }
    # Shards alone are no tractogram: nothing until a merged one is listed.
    assert "shards/sl-0000.trk" not in names(derivatives.outputs(series, tracked, ""))
    no_merge = manifest(uri, "tractography", listed)
    assert set(names(derivatives.outputs(series, no_merge, ""))) == {"fa.nii.gz", "wm_mask.nii.gz"}


def test_sidecars_carry_bids_fields_and_the_owning_job() -> None:
    uri = f"{QSIPREP}/sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz"
    series = Series.of(uri)
    assert series is not None
    seg = "sub-01/anat/sub-01_desc-aseg_dseg.nii.gz"
    m = manifest(
        uri,
        "tractography",
        ["fa.nii.gz", "wm_mask.nii.gz"],
        wm_source="segmentation",
        segmentation=seg,
    )
    found = {o.key.rsplit("_", 1)[1]: o for o in derivatives.outputs(series, m, "/r/manifest.json")}
    source = "bids:qsiprep:sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz"
    fa, wm = found["FA.nii.gz"], found["mask.nii.gz"]
    assert fa.sidecar_key == "sub-01/dwi/sub-01_space-T1w_FA.json"
    assert fa.sidecar["SkullStripped"] is True and fa.sidecar["Sources"] == [source]
    # space-T1w is no standard template: BIDS requires SpatialReference, the source's grid.
    assert fa.sidecar["SpatialReference"] == source
    assert wm.sidecar["Type"] == "ROI"
    assert wm.sidecar["Sources"] == [source, f"bids:qsiprep:{seg}"]
    assert fa.sidecar["Voxfleet"]["JobKey"] == m.job_key
    assert fa.sidecar["Voxfleet"]["Manifest"] == "/r/manifest.json"
    assert derivatives.owner(derivatives.to_json(fa.sidecar)) == m.job_key
    assert derivatives.owner(b"{}") is None and derivatives.owner(b"not json") is None


def test_dataset_description_links_the_source_dataset_by_uri() -> None:
    uri = f"{QSIPREP}/sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz"
    series = Series.of(uri)
    assert series is not None
    described = derivatives.dataset_description(series, manifest(uri, "dti", []))
    assert described["DatasetType"] == "derivative"
    assert described["BIDSVersion"] == derivatives.BIDS_VERSION
    (generated,) = described["GeneratedBy"]
    assert generated["Name"] == "voxfleet" and generated["Version"]
    assert '"fit_method": "WLS"' in generated["Description"]  # the defaults the job ran with
    # A path is no URI: DatasetLinks and SourceDatasets get file:// (the validator does not check).
    assert described["DatasetLinks"] == {"qsiprep": "file:///data/qsiprep"}
    assert described["SourceDatasets"] == [{"URL": "file:///data/qsiprep"}]
    for value in described["DatasetLinks"].values():
        assert urlparse(value).scheme in ("file", "s3")
    json.dumps(described)  # plain JSON


def test_hcp_inputs_and_other_pipelines_have_no_bids_names() -> None:
    assert Series.of("/data/hcp/100307") is None
    uri = f"{RAW}/sub-01/dwi/sub-01_dwi.nii.gz"
    series = Series.of(uri)
    assert series is not None
    assert derivatives.outputs(series, manifest(uri, "microstructure", ["fa.nii.gz"]), "") == []


def test_bidsignore_lists_voxfleets_folders() -> None:
    lines = derivatives.bidsignore().splitlines()
    assert f"/{PLANS}" in lines  # the producer's campaign plans
    assert "/sub-*_*" in lines
    for pipeline in PIPELINE_PARAMS:
        assert f"/*/{pipeline}" in lines
    assert not any(line.endswith("/") for line in lines)  # see bidsignore's docstring
