"""QC images: mid-slice montages of a volume, optionally with an overlay (tracts, labels).

Uses ``matplotlib.figure.Figure`` directly, never pyplot: pyplot keeps global figure state and
may pick an interactive backend, neither of which belongs in a headless, long-lived consumer.
Volumes are reoriented to RAS+ first, so every subject's picture reads the same way whatever
the voxel order on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from nibabel.orientations import apply_orientation, io_orientation
from numpy.typing import NDArray

VIEWS = ("axial", "coronal", "sagittal")


def to_ras(
    volume: NDArray[Any], affine: NDArray[np.floating[Any]]
) -> tuple[NDArray[Any], tuple[float, float, float]]:
    """The volume with voxel axes flipped/permuted to the nearest RAS+ order, and its zooms."""
    ornt = io_orientation(affine)
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    ras_zooms = np.empty(3)
    ras_zooms[ornt[:, 0].astype(int)] = zooms
    zx, zy, zz = (float(z) for z in ras_zooms)
    oriented: NDArray[Any] = apply_orientation(volume, ornt)
    return oriented, (zx, zy, zz)


def mid_slices(volume: NDArray[Any]) -> dict[str, NDArray[Any]]:
    """Axial, coronal and sagittal middle slices of a RAS+ volume, oriented for ``imshow`` with
    ``origin="lower"`` (rows = superior/anterior up, columns = right/anterior across)."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    x, y, z = (n // 2 for n in volume.shape)
    return {
        "axial": volume[:, :, z].T,
        "coronal": volume[:, y, :].T,
        "sagittal": volume[x, :, :].T,
    }


def _aspects(zooms: tuple[float, float, float]) -> dict[str, float]:
    # imshow's aspect is the height/width of one pixel: the vertical axis' voxel size over the
    # horizontal one's, so anisotropic voxels are not drawn squashed.
    zx, zy, zz = zooms
    return {"axial": zy / zx, "coronal": zz / zx, "sagittal": zz / zy}


def _robust_limits(volume: NDArray[Any]) -> tuple[float, float]:
    values = volume[np.isfinite(volume) & (volume != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.0])
    return float(low), float(high if high > low else low + 1.0)


def save_mid_slices(
    path: Path,
    volume: NDArray[Any],
    affine: NDArray[np.floating[Any]],
    *,
    title: str = "",
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    overlay: NDArray[Any] | None = None,
    overlay_cmap: str = "autumn",
    overlay_alpha: float = 0.6,
    colorbar: bool = True,
    dpi: int = 100,
) -> Path:
    """Write a 1x3 PNG montage (axial, coronal, sagittal mid-slices) of ``volume`` to ``path``.

    ``overlay`` (same grid) is drawn on top where it is non-zero; zeros stay transparent.
    ``vmin``/``vmax`` default to the 1st/99th percentile of the non-zero voxels.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    if overlay is not None and overlay.shape != volume.shape:
        raise ValueError(f"overlay shape {overlay.shape} != volume shape {volume.shape}")
    ras, zooms = to_ras(volume, affine)
    low, high = _robust_limits(ras)
    vmin = low if vmin is None else vmin
    vmax = high if vmax is None else vmax
    slices = mid_slices(ras)
    over = mid_slices(to_ras(overlay, affine)[0]) if overlay is not None else None
    aspects = _aspects(zooms)

    fig = Figure(figsize=(12, 4.4), dpi=dpi, facecolor="black")
    axes = fig.subplots(1, 3)
    image = None
    for ax, view in zip(axes, VIEWS, strict=True):
        image = ax.imshow(
            slices[view],
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            aspect=aspects[view],
            interpolation="nearest",
        )
        if over is not None:
            layer = np.ma.masked_equal(over[view], 0)
            ax.imshow(
                layer,
                cmap=overlay_cmap,
                alpha=overlay_alpha,
                origin="lower",
                aspect=aspects[view],
                interpolation="nearest",
            )
        ax.set_title(view, color="white", fontsize=10)
        ax.set_axis_off()
    if colorbar and image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.8, fraction=0.03)
        bar.ax.tick_params(colors="white", labelsize=8)
    if title:
        fig.suptitle(title, color="white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor=fig.get_facecolor())
    return path
