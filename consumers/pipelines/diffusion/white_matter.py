"""White-matter masks on the diffusion grid: from FreeSurfer labels, or from FA.

The reference pipeline takes white matter from ``aparc+aseg`` (on the finer T1 grid, resampled
by nearest neighbour so labels stay labels). Inputs without a segmentation (dipy's own sample
data, say) can use an FA threshold inside the brain mask instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.diffusion.hcp import Subject, load_aparc, resample_labels_nearest
from shared.errors import InvalidInput, MissingInput
from shared.layouts.hcp import APARC_KEY
from shared.settings import Settings
from shared.store import ObjectStore


def wm_from_labels(labels: NDArray[np.integer], wm_labels: tuple[int, ...]) -> NDArray[np.bool_]:
    """Voxels whose label is one of ``wm_labels``."""
    return np.isin(labels, np.asarray(wm_labels, dtype=np.int64))


def read_aparc(
    inputs: ObjectStore, workdir: Path, settings: Settings
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """The subject's ``aparc+aseg`` labels and affine; a missing one names the alternative."""
    try:
        return load_aparc(inputs, workdir, settings)
    except MissingInput as exc:
        raise MissingInput(f"{exc}; without a segmentation, use wm_source=fa") from None


def wm_from_aparc(
    labels: NDArray[np.int32],
    labels_affine: NDArray[np.float64],
    subject: Subject,
    wm_labels: tuple[int, ...],
) -> NDArray[np.bool_]:
    """The white-matter mask on the diffusion grid from labels on the T1 grid."""
    on_grid = resample_labels_nearest(labels, labels_affine, subject.shape, subject.affine)
    wm = wm_from_labels(on_grid, wm_labels)
    if not wm.any():
        found = "none on the DWI grid" if wm_from_labels(labels, wm_labels).any() else "none"
        shown = ", ".join(str(label) for label in wm_labels[:12])
        more = ", ..." if len(wm_labels) > 12 else ""
        raise InvalidInput(
            f"{APARC_KEY} has no white matter: {found} of the labels {shown}{more}"
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
