"""White-matter masks on the diffusion grid: from a segmentation, or from FA.

The reference pipeline takes white matter from FreeSurfer's ``aparc+aseg`` (on the finer T1
grid, resampled by nearest neighbour so labels stay labels). QSIPrep derivatives carry either
FreeSurfer's labels (``desc-aseg_dseg``) or tissue classes (``_dseg``: 3 is white matter).
Inputs without a segmentation (raw BIDS, dipy's own sample data) use an FA threshold inside the
brain mask instead; ``choose_source`` decides, and the job's summary records the choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.diffusion import nifti
from consumers.pipelines.diffusion.subject import Subject
from shared.errors import InvalidInput, MissingInput
from shared.layouts import SubjectFiles
from shared.settings import Settings
from shared.store import ObjectStore

#: The white-matter class of a tissue segmentation (FSL FAST / QSIPrep: 1 CSF, 2 GM, 3 WM).
TISSUE_WM_LABELS: tuple[int, ...] = (3,)

WmSource = Literal["segmentation", "fa"]


def choose_source(requested: str, files: SubjectFiles) -> WmSource:
    """``auto``: the layout's segmentation where there is one, else FA. Asking for the
    segmentation of a series that has none is an error naming the way out."""
    if requested == "fa":
        return "fa"
    if files.segmentation is not None:
        return "segmentation"
    if requested == "auto":
        return "fa"
    raise MissingInput(
        f"no segmentation for {files.dwi} (the {files.layout} layout found none); "
        "without a segmentation, use wm_source=fa (or auto)"
    )


def labels_for(files: SubjectFiles, wm_labels: tuple[int, ...]) -> tuple[int, ...]:
    """The labels that are white matter in this series' segmentation."""
    return TISSUE_WM_LABELS if files.segmentation_kind == "tissue" else wm_labels


def wm_from_labels(labels: NDArray[np.integer], wm_labels: tuple[int, ...]) -> NDArray[np.bool_]:
    """Voxels whose label is one of ``wm_labels``."""
    return np.isin(labels, np.asarray(wm_labels, dtype=np.int64))


def read_segmentation(
    inputs: ObjectStore, files: SubjectFiles, workdir: Path, settings: Settings
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """The series' segmentation labels and affine (``choose_source`` said there is one)."""
    if files.segmentation is None:
        raise MissingInput(f"no segmentation for {files.dwi}; use wm_source=fa")
    return nifti.read_labels(inputs, files.segmentation, workdir, settings)


def wm_from_segmentation(
    labels: NDArray[np.int32],
    labels_affine: NDArray[np.float64],
    subject: Subject,
    wm_labels: tuple[int, ...],
) -> NDArray[np.bool_]:
    """The white-matter mask on the diffusion grid from labels on the anatomical grid."""
    on_grid = resample_labels_nearest(labels, labels_affine, subject.shape, subject.affine)
    wm = wm_from_labels(on_grid, wm_labels)
    if not wm.any():
        found = "none on the DWI grid" if wm_from_labels(labels, wm_labels).any() else "none"
        shown = ", ".join(str(label) for label in wm_labels[:12])
        more = ", ..." if len(wm_labels) > 12 else ""
        raise InvalidInput(
            f"{subject.files.segmentation} has no white matter: {found} of the labels "
            f"{shown}{more}"
            + (" (do the two images overlap in world space?)" if found != "none" else "")
        )
    return wm


def wm_from_fa(
    fa: NDArray[np.floating], brain: NDArray[np.bool_], threshold: float
) -> NDArray[np.bool_]:
    """Brain voxels with FA above ``threshold`` (NaN FA is not white matter)."""
    with np.errstate(invalid="ignore"):
        wm = brain & (fa > threshold)
    if not wm.any():
        raise InvalidInput(
            f"no brain voxel has FA > {threshold:g}, so the white-matter mask is empty; "
            "lower fa_wm_threshold"
        )
    return np.asarray(wm, dtype=bool)


def resample_labels_nearest(
    labels: NDArray[np.integer[Any]],
    labels_affine: NDArray[np.floating[Any]],
    target_shape: tuple[int, int, int],
    target_affine: NDArray[np.floating[Any]],
    *,
    fill: int = 0,
) -> NDArray[np.int32]:
    """Labels on the target grid: each target voxel centre takes the label of the nearest
    source voxel centre in world coordinates; centres outside the source grid get ``fill``.

    Nearest neighbour keeps labels as labels (no interpolated, meaningless in-between ids).
    Ties (a centre exactly half-way) round up, so the result does not depend on numpy's
    round-half-to-even.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D, got shape {labels.shape}")
    # target voxel -> world -> source voxel, as one affine.
    vox2vox = np.linalg.inv(np.asarray(labels_affine, dtype=np.float64)) @ np.asarray(
        target_affine, dtype=np.float64
    )
    rot, shift = vox2vox[:3, :3], vox2vox[:3, 3]
    nx, ny, nz = target_shape
    jj, kk = np.meshgrid(np.arange(ny), np.arange(nz), indexing="ij")
    jk = np.stack([jj.ravel(), kk.ravel()]).astype(np.float64)  # (2, ny*nz)
    src_shape = np.asarray(labels.shape)[:, None]
    out = np.full(target_shape, fill, dtype=np.int32)
    # One x-plane at a time keeps the coordinate arrays small for full-size brains.
    for i in range(nx):
        coords = rot[:, :1] * float(i) + rot[:, 1:] @ jk + shift[:, None]
        idx = np.floor(coords + 0.5).astype(np.int64)
        inside = ((idx >= 0) & (idx < src_shape)).all(axis=0)
        plane = np.full(ny * nz, fill, dtype=np.int32)
        plane[inside] = labels[idx[0, inside], idx[1, inside], idx[2, inside]]
        out[i] = plane.reshape(ny, nz)
    return out
