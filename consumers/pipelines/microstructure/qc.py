"""QC image of a micro-CT job: three orthogonal mid-slices of the input with the fiber labels
overlaid (one colour per label), drawn with ``matplotlib.figure.Figure`` (no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from numpy.typing import NDArray

# (title, image rows axis, image columns axis) for slices of a (z, y, x) volume.
VIEWS = (("z (xy plane)", 1, 2), ("y (xz plane)", 0, 2), ("x (yz plane)", 0, 1))
_PALETTE = ListedColormap(
    np.random.default_rng(7).uniform(0.25, 1.0, size=(64, 3)), name="fiber-labels"
)


def middle_indices(volume_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The index of the middle plane along each axis (z, y, x): where the QC views cut."""
    return (volume_shape[0] // 2, volume_shape[1] // 2, volume_shape[2] // 2)


def _limits(image: NDArray[Any]) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.0])
    return float(low), float(high if high > low else low + 1.0)


def save_orthogonal(
    path: Path,
    images: list[NDArray[Any]],
    labels: list[NDArray[Any]],
    voxel_size: tuple[float, float, float],
    title: str,
) -> Path:
    """``images``/``labels``: the slices at mid z, mid y and mid x, in that order."""
    fig = Figure(figsize=(13, 4.6), dpi=100)
    axes = fig.subplots(1, 3)
    low, high = _limits(np.concatenate([i.ravel() for i in images]).astype(np.float64))
    for ax, image, label, (name, rows, cols) in zip(axes, images, labels, VIEWS, strict=True):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest", origin="lower",
                  aspect=voxel_size[rows] / voxel_size[cols])  # fmt: skip
        overlay = np.ma.masked_equal(np.asarray(label) % 64 + (np.asarray(label) > 0), 0)
        ax.imshow(overlay, cmap=_PALETTE, vmin=1, vmax=64, alpha=0.45, interpolation="nearest",
                  origin="lower", aspect=voxel_size[rows] / voxel_size[cols])  # fmt: skip
        ax.set_title(f"mid {name}: {int(np.count_nonzero(label))} fiber voxels", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def mid_slices(
    path: Path,
    volume: Any,
    labels: Any,
    chunks: tuple[tuple[int, ...], ...],
    voxel_size: tuple[float, float, float],
    title: str,
    client: Any,
) -> Path:
    """``save_orthogonal`` of the stored ``volume`` and ``labels`` (arrays a worker can read
    regions of): the workers read the three planes, the consumer draws them."""
    mz, my, mx = middle_indices(volume.shape)
    source = da.from_array(volume, chunks=volume.chunks, meta=np.empty((0, 0, 0), volume.dtype))
    fibers = da.from_array(labels, chunks=chunks, meta=np.empty((0, 0, 0), labels.dtype))
    planes = [a[mz] for a in (source, fibers)] + [a[:, my] for a in (source, fibers)]
    planes += [a[:, :, mx] for a in (source, fibers)]
    parts = client.gather(client.compute(planes))
    return save_orthogonal(path, list(parts[0::2]), list(parts[1::2]), voxel_size, title)
