"""One diffusion series (HCP, raw BIDS or QSIPrep, see ``shared.layouts``) read from an object
store, validated.

Everything a user could get wrong about an input becomes ``InvalidInput`` with a one-line
reason naming the file, *before* any cluster is acquired (``check_subject``, from headers and
the small text files only). The gradient table's own checks are in ``gradients.py``, the
per-file checks in ``nifti.py``.

Raw BIDS has no brain mask; one is computed the way dipy's ``dipy_median_otsu`` workflow does
it (``median_otsu`` on the mean b0, median radius 2, 5 passes) and recorded as the mask's
source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.diffusion import nifti
from consumers.pipelines.diffusion.gradients import (
    GradientFiles,
    gradient_table_for,
    read_gradients,
)
from shared import provenance
from shared.errors import InvalidInput
from shared.layouts import SubjectFiles
from shared.settings import Settings
from shared.store import ObjectStore

# Mask and label volumes may share the DWI grid only up to rounding in the stored affine.
_AFFINE_ATOL = 1e-3
# The defaults of dipy's own workflow (MedianOtsuFlow, ``dipy_median_otsu``). The function's
# defaults (radius 4, 4 passes) erode a small or low-resolution brain to half its size.
MEDIAN_RADIUS = 2
NUMPASS = 5

#: Where the brain mask came from: the layout's own file, or median_otsu on the mean b0.
MaskSource = Literal["layout", "median_otsu"]


@dataclass
class Subject:
    """A validated diffusion series, ready to fit."""

    data: NDArray[np.float32]  # (x, y, z, volumes)
    affine: NDArray[np.float64]  # voxel -> world (mm), shared by data and mask
    gtab: Any  # dipy GradientTable (dipy has no type stubs)
    mask: NDArray[np.bool_]  # (x, y, z)
    zooms: tuple[float, float, float]  # voxel size in mm
    xform_codes: tuple[int, int]  # (qform_code, sform_code) of the DWI, reused on outputs
    nonfinite_values: int  # NaN/inf DWI samples that were replaced by 0
    source: str  # URI of the series' DWI, for messages and reports
    files: SubjectFiles
    mask_source: MaskSource = "layout"
    inputs: dict[str, Any] = field(default_factory=dict)  # what was read (provenance.objects)

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.mask.shape[:3]  # the mask's grid is the data's (load checks it)
        return (x, y, z)

    def release_data(self) -> None:
        """Let the DWI go (the largest array of a job: 4.2 GB at HCP size) once every stage that
        reads it has run; the grid, mask and gradients stay."""
        self.data = np.empty((0, 0, 0, self.data.shape[3]), dtype=np.float32)


def _gradient_files(files: SubjectFiles) -> GradientFiles:
    return GradientFiles(bval=files.bval, bvec=files.bvec, dwi=files.dwi)


def _same_grid(
    key: str,
    other_shape: tuple[int, ...],
    other_affine: NDArray[Any],
    files: SubjectFiles,
    shape: tuple[int, ...],
    affine: NDArray[Any],
) -> None:
    if other_shape != shape[:3]:
        raise InvalidInput(f"{key} has shape {other_shape} but {files.dwi} volumes are {shape[:3]}")
    if not np.allclose(other_affine, affine, atol=_AFFINE_ATOL):
        raise InvalidInput(f"{key} is not on the same grid (affine) as {files.dwi}")


def check_subject(
    inputs: ObjectStore,
    files: SubjectFiles,
    settings: Settings,
    *,
    b0_threshold: float,
    segmentation: bool = False,
) -> Any:
    """The cheap half of ``load_subject``, run before any cluster starts: every object there,
    non-empty and within the size limit; the images' headers (read from their first bytes)
    of the right rank, type and size, the mask on the DWI grid; the gradient table valid for
    the DWI's volumes; with ``segmentation``, the segmentation's header too. Returns the dipy
    GradientTable."""
    dwi, shape = nifti.checked_header(inputs, files.dwi, settings, rank=4)
    if files.mask is not None:
        mask, mask_shape = nifti.checked_header(inputs, files.mask, settings, rank=3)
        _same_grid(
            files.mask, mask_shape, mask.get_best_affine(), files, shape, dwi.get_best_affine()
        )
    if segmentation and files.segmentation is not None:
        nifti.checked_header(inputs, files.segmentation, settings, rank=3)
    bvals, bvecs = read_gradients(
        nifti.read_text(inputs, files.bval, settings),
        nifti.read_text(inputs, files.bvec, settings),
        shape[3],
        b0_threshold,
        _gradient_files(files),
    )
    return gradient_table_for(bvals, bvecs, b0_threshold, _gradient_files(files))


def _layout_mask(
    inputs: ObjectStore,
    files: SubjectFiles,
    key: str,
    workdir: Path,
    settings: Settings,
    shape: tuple[int, ...],
    affine: NDArray[np.float64],
) -> NDArray[np.bool_]:
    img, path, mask_shape = nifti.open_checked(inputs, key, workdir, settings, rank=3)
    _same_grid(key, mask_shape, img.affine, files, shape, affine)
    raw = nifti.read_voxels(img, path, key, None).reshape(shape[:3])
    return np.asarray(np.isfinite(raw) & (raw != 0), dtype=bool)


def brain_mask(data: NDArray[np.float32], b0s: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """dipy's ``median_otsu`` on the mean b0 (what ``vol_idx`` would average, without the
    masked copy of the whole 4D series that passing it would return)."""
    from dipy.segment.mask import median_otsu

    index = np.flatnonzero(b0s)
    mean_b0 = np.zeros(data.shape[:3], dtype=np.float64)
    for v in index:  # one volume at a time: no 4D temporary
        mean_b0 += data[..., v]
    mean_b0 /= len(index)
    _, mask = median_otsu(mean_b0, median_radius=MEDIAN_RADIUS, numpass=NUMPASS)
    return np.asarray(mask, dtype=bool)


def _replace_nonfinite(data: NDArray[np.float32]) -> tuple[int, NDArray[np.int32]]:
    """Zero every NaN/inf sample in place; (how many, per-voxel counts)."""
    per_voxel = np.zeros(data.shape[:3], dtype=np.int32)
    for v in range(data.shape[3]):  # one volume at a time: a whole-array mask is 1 GB for HCP
        bad = ~np.isfinite(data[..., v])
        if bad.any():
            per_voxel += bad
            data[..., v][bad] = 0.0
    return int(per_voxel.sum()), per_voxel


def load_subject(
    inputs: ObjectStore,
    files: SubjectFiles,
    workdir: Path,
    settings: Settings,
    *,
    b0_threshold: float,
) -> Subject:
    """Download, validate and load the diffusion series ``files`` below ``inputs``."""
    # Fetch every small file first: a missing bvec should not cost a multi-GB download.
    bvals_text = nifti.read_text(inputs, files.bval, settings)
    bvecs_text = nifti.read_text(inputs, files.bvec, settings)
    nifti.checked_header(inputs, files.dwi, settings, rank=4)
    if files.mask is not None:
        nifti.checked_header(inputs, files.mask, settings, rank=3)

    img, dwi_path, shape = nifti.open_checked(inputs, files.dwi, workdir, settings, rank=4)
    names = _gradient_files(files)
    bvals, bvecs = read_gradients(bvals_text, bvecs_text, shape[3], b0_threshold, names)
    gtab = gradient_table_for(bvals, bvecs, b0_threshold, names)
    affine = np.asarray(img.affine, dtype=np.float64)
    zx, zy, zz = (float(z) for z in img.header.get_zooms()[:3])
    xform_codes = (int(img.header["qform_code"]), int(img.header["sform_code"]))

    mask: NDArray[np.bool_] | None = None
    if files.mask is not None:  # before the DWI's voxels: an empty mask costs no big read
        mask = _layout_mask(inputs, files, files.mask, workdir, settings, shape, affine)
        if not mask.any():
            raise InvalidInput(f"{files.mask} is empty (no brain voxels)")

    data = nifti.read_voxels(img, dwi_path, files.dwi, np.float32)
    # Scanner or reconstruction glitches leave isolated NaN/inf samples in otherwise good data.
    # Zero is below dipy's minimum signal and gets clipped like any dropout, so the affected
    # voxels still fit; failing the whole subject would be harsher. The count is reported.
    # Beyond a small fraction of the brain's samples it is broken data, not glitches: fail.
    nonfinite, per_voxel = _replace_nonfinite(data)
    source: MaskSource = "layout"
    if mask is None:
        mask, source = brain_mask(data, gtab.b0s_mask), "median_otsu"
        if not mask.any():
            raise InvalidInput(f"median_otsu found no brain in {files.dwi} (mean b0 is flat)")
    in_brain = int(per_voxel[mask].sum())
    samples = int(np.count_nonzero(mask)) * shape[3]
    if in_brain > settings.max_nonfinite_fraction * samples:
        raise InvalidInput(
            f"{files.dwi} has {in_brain} NaN or infinite samples in the brain mask "
            f"({100 * in_brain / samples:.3g}% of {samples}; the limit is "
            f"{100 * settings.max_nonfinite_fraction:g}%, VOXFLEET_MAX_NONFINITE_FRACTION)"
        )
    return Subject(
        data=data,
        affine=affine,
        gtab=gtab,
        mask=mask,
        zooms=(zx, zy, zz),
        xform_codes=xform_codes,
        nonfinite_values=nonfinite,
        source=inputs.uri_for(files.dwi),
        files=files,
        mask_source=source,
        inputs=provenance.objects(
            inputs, [k for k in (files.dwi, files.bval, files.bvec, files.mask) if k]
        ),
    )
