"""Fixtures for the pipeline tests: one real multi-process Dask cluster for the whole session,
and factories writing dipy's shipped ``small_64D`` DWI as an HCP-layout subject on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from consumers.pipelines.base import PipelineContext
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import LocalStore
from shared.timing import StageTimer


@dataclass(frozen=True)
class RawSubject:
    """What goes into the HCP files, before any loader touches it."""

    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray  # (N,)
    bvecs: np.ndarray  # (3, N), the HCP orientation
    mask: np.ndarray  # (x, y, z) uint8


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit="1GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield client


@pytest.fixture(scope="session")
def small64d() -> RawSubject:
    from dipy.data import get_fnames

    fdata, fbvals, fbvecs = get_fnames(name="small_64D")
    img = nib.load(fdata)
    data = np.asanyarray(img.dataobj)
    bvecs = np.loadtxt(fbvecs)
    bvecs = bvecs if bvecs.shape[0] == 3 else bvecs.T
    # No mask ships with small_64D. Median-Otsu keeps ~100 voxels of this 10^3 crop; a b0 cut
    # keeps ~700, which exercises the chunking better and is still a plausible "brain".
    b0 = data[..., 0].astype(np.float64)
    mask = (b0 > np.percentile(b0, 30)).astype(np.uint8)
    return RawSubject(
        data=data,
        affine=np.asarray(img.affine),
        bvals=np.loadtxt(fbvals),
        bvecs=bvecs,
        mask=mask,
    )


def write_hcp(
    root: Path,
    raw: RawSubject,
    *,
    data: np.ndarray | None = None,
    bvals: np.ndarray | None = None,
    bvecs: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    mask_affine: np.ndarray | None = None,
) -> Path:
    """Write an HCP-layout subject under ``root`` (overrides replace one piece)."""
    diff = root / "T1w" / "Diffusion"
    diff.mkdir(parents=True, exist_ok=True)
    data = raw.data if data is None else data
    nib.save(nib.Nifti1Image(data, raw.affine), diff / "data.nii.gz")
    mask = raw.mask if mask is None else mask
    affine = raw.affine if mask_affine is None else mask_affine
    nib.save(nib.Nifti1Image(mask, affine), diff / "nodif_brain_mask.nii.gz")
    bvals = raw.bvals if bvals is None else bvals
    bvecs = raw.bvecs if bvecs is None else bvecs
    # HCP text layout: bvals on one line, bvecs as three lines (x, y, z).
    (diff / "bvals").write_text(" ".join(f"{b:g}" for b in np.atleast_1d(bvals)) + "\n")
    (diff / "bvecs").write_text(
        "\n".join(" ".join(f"{v:.8f}" for v in row) for row in np.atleast_2d(bvecs)) + "\n"
    )
    return root


@pytest.fixture
def hcp_subject(tmp_path: Path, small64d: RawSubject) -> Callable[..., Path]:
    """Factory: ``hcp_subject(**overrides)`` writes a subject at ``tmp_path/100307``."""

    def make(**overrides: Any) -> Path:
        return write_hcp(tmp_path / "100307", small64d, **overrides)

    return make


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., PipelineContext]:
    """Factory: a PipelineContext over a subject directory, outputs below ``tmp_path/out``."""

    def make(
        subject_dir: Path, params: dict[str, Any] | None = None, settings: Settings | None = None
    ) -> PipelineContext:
        out = tmp_path / "out"
        return PipelineContext(
            spec=JobSpec(
                pipeline="dti",
                input_uri=str(subject_dir),
                results_uri=str(out),
                params=params or {},
            ),
            inputs=LocalStore(subject_dir),
            out=LocalStore(out / "attempt"),
            timer=StageTimer(),
            settings=settings or Settings(),
            workdir=tmp_path / "work",
        )

    return make
