"""The diffusion pipelines over every input layout: the same data in QSIPrep's layout tracks to
the same streamlines as in HCP's; raw BIDS (no mask, no segmentation) gets dipy's median_otsu
brain mask and FA white matter, recorded as such; a tissue-class segmentation gives white
matter from class 3."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from dipy.io.streamline import load_tractogram

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.diffusion import dti, subject, tractography, white_matter
from producer.synth.bids import BidsSubject, write_bids
from producer.synth.hcp import subject_seed, write_subject
from shared.errors import InvalidInput, MissingInput
from shared.jobspec import JobSpec
from shared.layouts import open_series
from shared.settings import Settings
from shared.store import LocalStore
from shared.timing import StageTimer

pytestmark = pytest.mark.filterwarnings("ignore:The legacy descoteaux07:PendingDeprecationWarning")

SEED = 7
HCP_DWI = "T1w/Diffusion/data.nii.gz"
QSI_DWI = "sub-01/dwi/sub-01_space-T1w_desc-preproc_dwi.nii.gz"
BIDS_DWI = "sub-01/dwi/sub-01_dwi.nii.gz"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One synthetic brain in three layouts: HCP, QSIPrep (every HCP volume; FreeSurfer labels
    and tissue classes) and raw BIDS (b0s and b=1000 only)."""
    root = tmp_path_factory.mktemp("layouts")
    # write_subjects' seeding, which the BIDS writer shares: sub-01 is HCP subject "01".
    write_subject(LocalStore(root / "hcp"), "01", size="small", seed=subject_seed("01", SEED))
    write_bids(
        LocalStore(root / "qsiprep"),
        [BidsSubject("01", all_shells=True), BidsSubject("02", segmentation=False)],
        "small",
        layout="qsiprep",
        seed=SEED,
    )
    write_bids(LocalStore(root / "bids"), [BidsSubject("01")], "small", seed=SEED)
    return {"hcp": root / "hcp" / "01", "qsiprep": root / "qsiprep", "bids": root / "bids"}


def _ctx(
    input_uri: Path, out: Path, params: dict[str, Any] | None = None, pipeline: str = "tractography"
) -> PipelineContext:
    return PipelineContext(
        spec=JobSpec(
            pipeline=pipeline,
            input_uri=str(input_uri),
            results_uri=str(out),
            params=params or {},
        ),
        inputs=LocalStore(input_uri),
        out=LocalStore(out / "attempt"),
        timer=StageTimer(),
        settings=Settings(),
        workdir=out / f"work-{uuid.uuid4().hex[:6]}",
    )


def _track(ctx: PipelineContext, client: Any) -> tuple[tractography.Loaded, PipelineResult]:
    """The job's result, and the subject as loaded (the job lets its own copy's DWI go)."""
    tractography.check(ctx)
    result = tractography.run(ctx, tractography.load(ctx), client)
    return tractography.load(ctx), result


def _streamlines(ctx: PipelineContext, result: PipelineResult, dwi: Path) -> list[np.ndarray]:
    """Every shard's streamlines in shard order, loaded with dipy's bounding-box check on."""
    out: list[np.ndarray] = []
    shards = [info for info in result.files if info.key.startswith("shards/")]
    assert len(shards) == len(result.files) - 1  # and tractogram.trx, their merge
    for info in shards:
        path = ctx.workdir / "check" / info.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ctx.out.get_bytes(info.key))
        sft = load_tractogram(str(path), str(dwi), bbox_valid_check=True)
        assert sft is not False, f"{info.key} does not load against {dwi}"
        out.extend(np.asarray(s) for s in sft.streamlines)
    return out


def test_qsiprep_series_tracks_like_the_same_data_in_hcp_layout(
    datasets: dict[str, Path], tmp_path: Path, dask_client: Any
) -> None:
    params = {"shards": 3, "step_size": 2.0, "qc": False}
    hcp_ctx = _ctx(datasets["hcp"], tmp_path / "hcp", params)
    qsi_ctx = _ctx(datasets["qsiprep"] / QSI_DWI, tmp_path / "qsi", params)
    hcp_loaded, hcp_result = _track(hcp_ctx, dask_client)
    qsi_loaded, qsi_result = _track(qsi_ctx, dask_client)

    # Same voxels, same gradient table, same mask and white matter: the inputs are identical.
    np.testing.assert_array_equal(qsi_loaded.subject.data, hcp_loaded.subject.data)
    np.testing.assert_array_equal(qsi_loaded.subject.mask, hcp_loaded.subject.mask)
    assert qsi_loaded.wm is not None and hcp_loaded.wm is not None
    np.testing.assert_array_equal(qsi_loaded.wm, hcp_loaded.wm)

    ours = _streamlines(qsi_ctx, qsi_result, datasets["qsiprep"] / QSI_DWI)
    theirs = _streamlines(hcp_ctx, hcp_result, datasets["hcp"] / HCP_DWI)
    assert len(ours) == len(theirs) == qsi_result.summary["streamlines"] > 100
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)

    summary = qsi_result.summary
    assert summary["layout"] == "qsiprep" and hcp_result.summary["layout"] == "hcp"
    assert summary["wm_source"] == "segmentation"
    assert summary["segmentation"] == "sub-01/anat/sub-01_desc-aseg_dseg.nii.gz"
    assert summary["brain_mask_source"] == "layout"
    assert summary["entities"]["subject"] == "01" and summary["entities"]["space"] == "T1w"
    assert "brain_mask.nii.gz" not in qsi_result.uploads  # the layout's own mask is the input's


def test_raw_bids_gets_median_otsu_brain_and_fa_white_matter(
    datasets: dict[str, Path], tmp_path: Path, dask_client: Any
) -> None:
    ctx = _ctx(datasets["bids"] / BIDS_DWI, tmp_path / "bids", {"shards": 2, "qc": False})
    loaded, result = _track(ctx, dask_client)
    assert loaded.wm_source == "fa" and loaded.subject.mask_source == "median_otsu"
    summary = result.summary
    assert summary["wm_source"] == "fa" and summary["segmentation"] is None
    assert summary["brain_mask_source"] == "median_otsu" and summary["layout"] == "bids"
    assert summary["streamlines"] > 0

    # The computed mask is dipy's own call on the mean b0 with its workflow's settings (radius 2,
    # 5 passes), and close to the phantom's brain.
    from dipy.segment.mask import median_otsu

    data = loaded.subject.data
    mean_b0 = data[..., loaded.subject.gtab.b0s_mask].astype(np.float64).mean(axis=3)
    _, expected = median_otsu(mean_b0, median_radius=2, numpass=5)
    np.testing.assert_array_equal(loaded.subject.mask, expected)
    truth = np.asarray(nib.load(datasets["hcp"] / "T1w/Diffusion/nodif_brain_mask.nii.gz").dataobj)
    truth = truth > 0
    dice = 2 * (truth & expected).sum() / (truth.sum() + expected.sum())
    assert dice > 0.85, dice  # 0.906 on this 30x36x30 phantom, 0.99 on the medium one

    # The mask that defines every map is published, on the DWI's grid.
    mask_path = result.uploads["brain_mask.nii.gz"]
    written: Any = nib.load(mask_path)
    np.testing.assert_array_equal(np.asarray(written.dataobj) > 0, loaded.subject.mask)
    np.testing.assert_allclose(written.affine, loaded.subject.affine, atol=1e-6)


def test_tissue_classes_give_white_matter_from_class_three(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    store, files = open_series(str(datasets["qsiprep"] / QSI_DWI), Settings())
    assert files.segmentation_kind == "freesurfer"  # aseg wins over the tissue classes
    tissue_key = "sub-01/anat/sub-01_dseg.nii.gz"
    tissue = dataclasses.replace(files, segmentation=tissue_key, segmentation_kind="tissue")
    loaded = subject.load_subject(store, tissue, tmp_path / "w", Settings(), b0_threshold=50)
    labels = white_matter.read_segmentation(store, tissue, tmp_path / "w", Settings())
    assert white_matter.labels_for(tissue, (2, 41)) == (3,)
    wm = white_matter.wm_from_segmentation(*labels, loaded, (3,))
    fs_labels = white_matter.read_segmentation(store, files, tmp_path / "w", Settings())
    from producer.synth.anatomy import WM_LABELS

    fs_wm = white_matter.wm_from_segmentation(*fs_labels, loaded, tuple(sorted(WM_LABELS)))
    np.testing.assert_array_equal(wm, fs_wm)  # class 3 is exactly the FreeSurfer WM labels


def test_qsiprep_subject_without_segmentation(datasets: dict[str, Path], tmp_path: Path) -> None:
    dwi = datasets["qsiprep"] / "sub-02/dwi/sub-02_space-T1w_desc-preproc_dwi.nii.gz"
    loaded = tractography.load(_ctx(dwi, tmp_path / "o"))
    assert loaded.wm_source == "fa" and loaded.wm is None
    assert loaded.subject.mask_source == "layout"
    with pytest.raises(MissingInput, match=r"no segmentation for sub-02/dwi/.*use wm_source=fa"):
        tractography.check(_ctx(dwi, tmp_path / "o", {"wm_source": "segmentation"}))


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("no-bval", r"missing input: no \.bval for .*sub-09_dwi\.nii\.gz"),
        ("zero-voxel-size", r"sub-09/dwi/sub-09_dwi\.nii\.gz has voxel sizes .* must be above 0"),
        ("singular-affine", r"sub-09/dwi/sub-09_dwi\.nii\.gz has a singular affine"),
    ],
)
def test_broken_bids_series_fail_in_one_line_naming_the_file(
    tmp_path: Path, fault: Any, message: str
) -> None:
    root = tmp_path / "ds"
    write_bids(LocalStore(root), [BidsSubject("09", broken=fault)], "small", seed=SEED)
    ctx = _ctx(root / "sub-09/dwi/sub-09_dwi.nii.gz", tmp_path / "o", {"qc": False})
    with pytest.raises((InvalidInput, MissingInput), match=message) as info:
        tractography.check(ctx)
    assert "\n" not in str(info.value)


def test_dti_over_raw_bids_publishes_its_brain_mask(
    datasets: dict[str, Path], tmp_path: Path, dask_client: Any
) -> None:
    ctx = _ctx(datasets["bids"] / BIDS_DWI, tmp_path / "dti", {"qc": False}, pipeline="dti")
    dti.check(ctx)
    loaded = dti.load(ctx)
    result = dti.run(ctx, loaded, dask_client)
    assert set(result.uploads) == {"fa.nii.gz", "md.nii.gz", "brain_mask.nii.gz"}
    assert result.summary["brain_mask_source"] == "median_otsu"
    assert result.summary["voxels"] == int(loaded.mask.sum())


def test_subject_source_names_the_series(datasets: dict[str, Path], tmp_path: Path) -> None:
    store, files = open_series(str(datasets["bids"] / BIDS_DWI), Settings())
    loaded = subject.load_subject(store, files, tmp_path / "w", Settings(), b0_threshold=50)
    assert loaded.source == str(datasets["bids"] / BIDS_DWI)
    assert files.bval == "sub-01/dwi/sub-01_dwi.bval" and files.mask is None
