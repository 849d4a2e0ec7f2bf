"""Thresholds and fiber statistics, computed from blocks and merged in the consumer.

Each label block reports, for every label it holds, ten moments (voxel count, coordinate sums
and second moments) and its first voxel in C order; labels that span blocks simply add up (the
first voxel: the smallest). From those the consumer gets sizes, the order in which the fibers
are numbered (``relabel``) and, per fiber, the principal axis of its voxels: the fiber's
direction (``geometry``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

OTSU_BINS = 1024
N_MOMENTS = 10  # count, sum z, y, x, then zz, zy, zx, yy, yx, xx
FIRST = N_MOMENTS  # the column after the moments: the C-order index of the first voxel
MIN_ELONGATION = 2.0  # a component whose long axis is not this much longer has no direction


SIZE_BINS = 64  # power-of-two size bins: [1, 2), [2, 4), ... enough for any volume


@dataclass
class Specks:
    """The components a block dropped: how many, their voxels, their sizes in power-of-two
    bins (``bins[k]``: sizes in [2^k, 2^(k+1))) and the largest."""

    count: int = 0
    voxels: int = 0
    bins: NDArray[np.int64] = field(default_factory=lambda: np.zeros(SIZE_BINS, np.int64))
    largest: int = 0

    @classmethod
    def of(cls, sizes: NDArray[Any]) -> Specks:
        if sizes.size == 0:
            return cls()
        bins = np.bincount(np.log2(sizes).astype(np.intp), minlength=SIZE_BINS)
        return cls(int(sizes.size), int(sizes.sum()), bins.astype(np.int64), int(sizes.max()))

    def add(self, other: Specks) -> Specks:
        return Specks(
            self.count + other.count,
            self.voxels + other.voxels,
            self.bins + other.bins,
            max(self.largest, other.largest),
        )


def otsu(values: NDArray[Any], value_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold of ``values`` (voxels above it form the bright class)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        raise ValueError("no finite values to threshold")
    low, high = value_range or (float(data.min()), float(data.max()))
    if high <= low:
        return float(low)
    hist, edges = np.histogram(data, bins=OTSU_BINS, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (s0 * w1 - (s0[-1] - s0) * w0) ** 2 / (w0 * w1)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def noise_sigma(boxes: list[NDArray[Any]]) -> dict[str, Any]:
    """Noise standard deviation from neighbour differences: the median absolute deviation of
    ``x[i+1] - x[i]`` along each axis, over sqrt(2) * 0.6745 (Gaussian noise). Edges inflate it
    along axes that cross structures; the smallest of the three axes is the least affected
    (along fibers, almost nothing changes but the noise)."""
    per_axis = []
    for axis in range(3):
        diffs = [
            np.diff(b.astype(np.float64), axis=axis).ravel() for b in boxes if b.shape[axis] > 1
        ]
        if not diffs:
            continue
        d = np.concatenate(diffs)
        per_axis.append(float(np.median(np.abs(d - np.median(d))) / (0.6745 * math.sqrt(2))))
    return {"noise": min(per_axis) if per_axis else 0.0, "per_axis": per_axis}


def block_moments(
    labels: NDArray[Any],
    offset: tuple[int, int, int],
    volume_shape: tuple[int, int, int] | None = None,
) -> NDArray[np.float64]:
    """Rows ``(label, count, sums..., second moments..., first)`` for the labels in one block,
    in volume coordinates (``offset`` is the block's corner; ``volume_shape`` None: the block is
    the whole volume). ``first`` is the C-order index in the volume of the label's first voxel
    in this block.

    One z plane at a time: z is constant there, so its four moments follow from the plane's
    count and y, x sums, and only six weighted counts run over the voxels (ten over every
    voxel was 1.7x the CPU). Every term is a sum of integers, exact in float64 (and so is
    ``first`` below 2^53 voxels)."""
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        return np.empty((0, N_MOMENTS + 2))
    _, height, width = volume_shape or tuple(
        o + n for o, n in zip(offset, labels.shape, strict=True)
    )
    n = top + 1
    acc = np.zeros((n, N_MOMENTS))
    first = np.full(n, np.inf)
    for k in range(labels.shape[0]):
        plane = labels[k]
        y, x = np.nonzero(plane)
        if y.size == 0:
            continue
        ids = plane[y, x].astype(np.intp)
        yy = (y + offset[1]).astype(np.float64)
        xx = (x + offset[2]).astype(np.float64)
        z = float(offset[0] + k)
        count = np.bincount(ids, minlength=n)
        _first_in_plane(first, ids, count, (z * height + yy) * width + xx)
        sum_y = np.bincount(ids, yy, n)
        sum_x = np.bincount(ids, xx, n)
        acc[:, 0] += count
        acc[:, 1] += z * count
        acc[:, 2] += sum_y
        acc[:, 3] += sum_x
        acc[:, 4] += z * z * count
        acc[:, 5] += z * sum_y
        acc[:, 6] += z * sum_x
        acc[:, 7] += np.bincount(ids, yy * yy, n)
        acc[:, 8] += np.bincount(ids, yy * xx, n)
        acc[:, 9] += np.bincount(ids, xx * xx, n)
    present = np.flatnonzero(acc[:, 0])
    present = present[present > 0]
    return np.column_stack([present.astype(np.float64), acc[present], first[present]])


def _first_in_plane(
    first: NDArray[np.float64], ids: NDArray[np.intp], count: NDArray[Any], index: NDArray[Any]
) -> None:
    """Planes come in z order and ``nonzero`` lists a plane in C order, so a label's first voxel
    is its first one in the first plane that holds it: only labels new in this plane are
    looked up (most planes add none)."""
    new = (count > 0) & np.isinf(first)
    if not new.any():
        return
    mask = new[ids]
    found, where = np.unique(ids[mask], return_index=True)
    first[found] = index[mask][where]


def merge_moments(rows: list[NDArray[np.float64]], n_labels: int) -> NDArray[np.float64]:
    """Per global label (row = label, row 0 the background): the moments summed over blocks,
    then the first voxel (the smallest of the blocks')."""
    acc = np.zeros((n_labels + 1, N_MOMENTS + 1))
    acc[:, FIRST] = np.inf
    for part in rows:
        if part.size:
            ids = part[:, 0].astype(np.intp)
            np.add.at(acc[:, :N_MOMENTS], ids, part[:, 1 : N_MOMENTS + 1])
            np.minimum.at(acc[:, FIRST], ids, part[:, FIRST + 1])
    return acc


def fiber_mask(moments: NDArray[np.float64], min_fiber_voxels: int) -> NDArray[np.bool_]:
    """Which rows of merged moments are fibers (the background row never is)."""
    keep: NDArray[np.bool_] = moments[:, 0] >= min_fiber_voxels
    keep[0] = False
    return keep


def size_histogram(
    sizes: NDArray[Any], more: NDArray[np.int64] | None = None
) -> dict[str, list[int]]:
    """Component sizes (voxels) in power-of-two bins: [1, 2), [2, 4), ...; ``more``: counts of
    further components already binned so (``more[k]``: sizes in [2^k, 2^(k+1)))."""
    counts = np.zeros(SIZE_BINS, np.int64) if more is None else more.astype(np.int64).copy()
    if sizes.size:
        found = np.bincount(np.log2(sizes).astype(np.intp), minlength=counts.size)
        counts[: found.size] += found[: counts.size]
    if not counts.any():
        return {"edges": [1, 2], "counts": [0]}
    top = max(1, int(np.flatnonzero(counts)[-1]) + 1)
    return {"edges": [1 << k for k in range(top + 1)], "counts": [int(c) for c in counts[:top]]}


@dataclass(frozen=True)
class Geometry:
    """Per component, in physical units (``voxel_size``): the shape its moments describe."""

    voxels: NDArray[np.float64]  # (n,)
    centroid: NDArray[np.float64]  # (n, 3) z, y, x; voxel i's centre lies at i * voxel_size
    direction: NDArray[np.float64]  # (n, 3) unit principal axis, signed so that z >= 0
    variances: NDArray[np.float64]  # (n, 3) along the principal axes, smallest first
    length: NDArray[np.float64]  # (n,) see ``geometry``

    @property
    def elongation(self) -> NDArray[np.float64]:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio: NDArray[np.float64] = np.sqrt(
                np.maximum(self.variances[:, 2], 0) / np.maximum(self.variances[:, 1], 1e-12)
            )
        return ratio


def geometry(moments: NDArray[np.float64], voxel_size: tuple[float, float, float]) -> Geometry:
    """Centroid, principal direction and length of each row of ``moments`` (no empty rows).

    The length is that of a uniform rod with the component's variance along its axis
    (L^2 / 12, whatever the radius), the component taken as the union of its voxel boxes: the
    voxel centres' variance plus a box's own along the axis (sum of d_i^2 v_i^2 / 12), so a
    straight run of n voxels is n voxels long. A variance, unlike the extent of the voxels'
    projections, barely moves for a speck of noise stuck to a fiber's end, and needs no second
    pass over the labels."""
    n = moments[:, 0]
    scale = np.asarray(voxel_size, dtype=np.float64)
    mean = moments[:, 1:4] / n[:, None]
    second = moments[:, 4:10] / n[:, None]
    cov = np.empty((n.size, 3, 3))
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    for k, (i, j) in enumerate(pairs):
        value = (second[:, k] - mean[:, i] * mean[:, j]) * scale[i] * scale[j]
        cov[:, i, j] = cov[:, j, i] = value
    evals, evecs = np.linalg.eigh(cov)
    axis = evecs[:, :, 2]
    # One sign per line: z >= 0 (the first non-zero component's, in a plane of constant z).
    lead = axis[np.arange(len(axis)), np.argmax(axis != 0, axis=1)]
    axis = np.where(lead[:, None] < 0, -axis, axis)
    box = (axis**2 * scale**2).sum(axis=1)
    return Geometry(
        voxels=n,
        centroid=mean * scale,
        direction=axis,
        variances=np.maximum(evals, 0.0),
        length=np.sqrt(12 * np.maximum(evals[:, 2], 0.0) + box),
    )


def orientation(
    moments: NDArray[np.float64], keep: NDArray[np.bool_], voxel_size: tuple[float, float, float]
) -> dict[str, Any] | None:
    """Mean fiber direction (z, y, x; unit vector with z >= 0) from the principal axes of the
    ``keep`` components that are elongated enough to have one, weighted by voxel count (their
    volume); how far fibers stray from it; and the orientation tensor (the volume-weighted mean
    of d d^T) with its eigenvalues, largest first (1, 0, 0: all parallel; 1/3 each:
    isotropic)."""
    if not keep.any():
        return None
    shape = geometry(moments[keep], voxel_size)
    long = shape.elongation >= MIN_ELONGATION
    if not long.any():
        return None
    axes, weights = shape.direction[long], shape.voxels[long]
    tensor = np.einsum("k,ki,kj->ij", weights, axes, axes) / weights.sum()
    evals, evecs = np.linalg.eigh(tensor)
    direction = evecs[:, 2] if evecs[0, 2] >= 0 else -evecs[:, 2]
    deviation = np.degrees(np.arccos(np.clip(np.abs(axes @ direction), 0.0, 1.0)))
    return {
        "direction_zyx": [round(float(v), 6) for v in direction],
        "angle_from_z_deg": round(float(np.degrees(np.arccos(min(1.0, abs(direction[0]))))), 4),
        "mean_deviation_deg": round(float(np.average(deviation, weights=weights)), 4),
        "fibers_with_direction": int(long.sum()),
        "mean_length": round(float(np.average(shape.length[long], weights=weights)), 3),
        "tensor_zyx": [[round(float(v), 6) for v in row] for row in tensor],
        "tensor_eigenvalues": [round(float(v), 6) for v in evals[::-1]],
    }


def fiber_statistics(
    moments: NDArray[np.float64],
    total_voxels: int,
    *,
    min_fiber_voxels: int,
    voxel_size: tuple[float, float, float],
    with_orientation: bool,
    specks: Specks | None = None,
) -> dict[str, Any]:
    """Counts and sizes of all components; the volume fraction and orientation of the fibers
    (the components of ``min_fiber_voxels`` or more: what the label image holds). ``specks``:
    components left out of ``moments`` (never fibers: see ``components``), counted too."""
    sizes = moments[1:, 0]
    sizes = sizes[sizes > 0]
    keep = fiber_mask(moments, min_fiber_voxels)
    fiber_voxels = int(moments[keep, 0].sum())
    largest = int(sizes.max()) if sizes.size else 0
    stats: dict[str, Any] = {
        "components": int(sizes.size) + (specks.count if specks else 0),
        "fibers": int(keep.sum()),
        "min_fiber_voxels": min_fiber_voxels,
        "fiber_voxels": fiber_voxels,
        "volume_fraction": round(fiber_voxels / total_voxels, 6) if total_voxels else 0.0,
        # above the threshold, fibers or not
        "segmented_voxels": int(sizes.sum()) + (specks.voxels if specks else 0),
        "size_histogram_voxels": size_histogram(sizes, specks.bins if specks else None),
        "largest_component_voxels": max(largest, specks.largest if specks else 0),
    }
    if with_orientation:
        stats["orientation"] = orientation(moments, keep, voxel_size)
    return stats
