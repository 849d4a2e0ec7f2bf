"""The chunked, distributed tensor fit must equal dipy's serial fit, voxel for voxel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from dipy.reconst.dti import TensorModel
from matplotlib.image import imread

from consumers.pipelines import PIPELINES, get_pipeline
from consumers.pipelines.base import PipelineContext
from consumers.pipelines.diffusion import dti
from shared.errors import InvalidInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOLERANCE = 1e-6


@pytest.mark.parametrize(("chunks", "fit_method"), [(None, "WLS"), (7, "WLS"), (3, "OLS")], ids=str)
def test_chunked_fit_equals_serial_fit(
    hcp_subject: Callable[..., Path],
    make_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    chunks: int | None,
    fit_method: str,
) -> None:
    ctx = make_ctx(hcp_subject(), {"chunks": chunks, "fit_method": fit_method})
    subject = dti.load(ctx)
    n_vox = int(subject.mask.sum())
    if chunks == 7:
        assert n_vox % 7 != 0, "the remainder case needs a voxel count 7 does not divide"

    result = dti.run(ctx, subject, dask_client)

    # Reference: dipy's own whole-volume fit of exactly the array the loader returned.
    serial = TensorModel(subject.gtab, fit_method=fit_method).fit(subject.data, mask=subject.mask)
    fa = nib.load(result.uploads["fa.nii.gz"])
    md = nib.load(result.uploads["md.nii.gz"])
    fa_diff = float(np.max(np.abs(fa.get_fdata() - serial.fa.astype(np.float32))))
    md_diff = float(np.max(np.abs(md.get_fdata() - serial.md.astype(np.float32))))
    print(f"chunks={chunks} {fit_method}: max|dFA|={fa_diff:.3g} max|dMD|={md_diff:.3g}")
    assert fa_diff <= TOLERANCE
    assert md_diff <= TOLERANCE
    # Also against float64 dipy output: the only loss is the float32 store.
    assert np.max(np.abs(fa.get_fdata()[subject.mask] - serial.fa[subject.mask])) <= TOLERANCE

    # Every mask voxel fitted (dipy gives FA > 0 wherever there is signal); zero outside.
    fa_data = fa.get_fdata()
    assert np.count_nonzero(fa_data[subject.mask]) == n_vox
    assert not fa_data[~subject.mask].any()
    assert fa.get_data_dtype() == np.float32

    expected_chunks = chunks if chunks is not None else 4 * 2
    assert result.summary["chunks"] == expected_chunks
    assert result.summary["voxels"] == n_vox
    assert ctx.timer.extra["dti_chunks"] == expected_chunks
    busy = ctx.timer.extra["dti_workers_busy_s"]
    assert busy and all(addr.startswith("tcp://") and s >= 0 for addr, s in busy.items())


def test_outputs_affine_qc_and_summary(
    hcp_subject: Callable[..., Path],
    make_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    small64d: Any,
) -> None:
    ctx = make_ctx(hcp_subject())
    subject = dti.load(ctx)
    result = dti.run(ctx, subject, dask_client)

    # Small outputs are local files for the consumer's publish stage; nothing is uploaded yet.
    assert list(result.uploads) == ["fa.nii.gz", "md.nii.gz", "qc/fa.png"]
    assert result.files == [] and list(ctx.out.list()) == []

    for name in ("fa.nii.gz", "md.nii.gz"):
        img = nib.load(result.uploads[name])
        assert img.shape == small64d.data.shape[:3]
        np.testing.assert_allclose(img.affine, small64d.affine, atol=1e-5)

    png = result.uploads["qc/fa.png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    pixels = imread(result.uploads["qc/fa.png"])
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100

    summary = result.summary
    for field in ("voxels", "chunks", "fa_median", "fa_mean_wm", "md_median"):
        assert summary[field] is not None, field
    assert 0.0 < summary["fa_median"] < 1.0
    assert 0.0 < summary["md_median"] < 5e-3  # mm^2/s: tissue MD is ~0.7e-3
    assert summary["nonfinite_values"] == 0
    assert set(ctx.timer.stages) == {"load", "dti", "write", "qc"}


def test_qc_off_writes_maps_only(
    hcp_subject: Callable[..., Path],
    make_ctx: Callable[..., PipelineContext],
    dask_client: Any,
) -> None:
    ctx = make_ctx(hcp_subject(), {"qc": False, "chunks": 1})
    result = dti.run(ctx, dti.load(ctx), dask_client)
    assert list(result.uploads) == ["fa.nii.gz", "md.nii.gz"]
    assert "qc" not in ctx.timer.stages


def test_nonfinite_samples_are_zeroed_and_counted(
    hcp_subject: Callable[..., Path],
    make_ctx: Callable[..., PipelineContext],
    small64d: Any,
) -> None:
    data = small64d.data.astype(np.float32)
    data[5, 5, 5, 3] = np.nan
    data[4, 4, 4, 10] = np.inf
    ctx = make_ctx(hcp_subject(data=data))
    subject = dti.load(ctx)
    assert subject.nonfinite_values == 2
    assert np.isfinite(subject.data).all()
    assert subject.data[5, 5, 5, 3] == 0.0


def test_too_few_diffusion_volumes(
    hcp_subject: Callable[..., Path],
    make_ctx: Callable[..., PipelineContext],
    small64d: Any,
) -> None:
    keep = [0, 1, 2, 3]
    subject_dir = hcp_subject(
        data=small64d.data[..., keep], bvals=small64d.bvals[keep], bvecs=small64d.bvecs[:, keep]
    )
    with pytest.raises(InvalidInput, match="at least 6"):
        dti.load(make_ctx(subject_dir))


def test_registry() -> None:
    assert get_pipeline("dti") is PIPELINES["dti"]
    assert get_pipeline("dti").load is dti.load
    with pytest.raises(InvalidInput, match="unknown pipeline 'nope'"):
        get_pipeline("nope")
