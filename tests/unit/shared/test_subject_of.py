"""The subject a single job is filed under when none is given (``JobSpec._derive``)."""

from __future__ import annotations

import pytest

from shared.jobspec import JobSpec
from shared.params import PIPELINE_PARAMS, PipelineParams


@pytest.mark.parametrize(
    ("input_uri", "subject"),
    [
        ("s3://openneuro.org/ds003097/sub-0001/dwi/sub-0001_run-1_dwi.nii.gz", "sub-0001_run-1"),
        (
            "/d/sub-01/ses-1/dwi/sub-01_ses-1_acq-b1000_dir-AP_run-2_dwi.nii.gz",
            "sub-01_ses-1_acq-b1000_dir-AP_run-2",
        ),
        ("/q/sub-02/ses-a/dwi/sub-02_ses-a_space-T1w_desc-preproc_dwi.nii.gz", "sub-02_ses-a"),
        ("/d/sub-03/dwi/sub-03_dwi.nii", "sub-03"),
        # Only the file name counts: folders above it that look like entities add nothing.
        ("s3://b/ses-archive/sub-04/dwi/sub-04_dwi.nii.gz", "sub-04"),
        ("/d/scan_dwi.nii.gz", "scan_dwi.nii.gz"),  # no entities: the file's name, as before
        ("s3://hcp/HCP_1200/100307/", "100307"),
        ("/ct/sample1.zarr", "sample1.zarr"),
    ],
)
def test_subject_of(input_uri: str, subject: str) -> None:
    assert PipelineParams.subject_of(input_uri) == subject
    job = JobSpec(pipeline="dti", input_uri=input_uri, results_uri="/out")
    assert job.subject == subject


def test_a_bids_series_is_filed_as_a_campaign_files_it() -> None:
    from shared.layouts.bids import entities, series_id

    key = "sub-01/ses-2/dwi/sub-01_ses-2_run-3_dwi.nii.gz"
    for kind in PIPELINE_PARAMS.values():
        if kind.input_marker is None:  # the diffusion pipelines
            assert kind.subject_of(f"s3://b/ds/{key}") == series_id(entities(key))
