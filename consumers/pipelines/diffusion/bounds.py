"""Streamlines kept inside the image's bounding box, so that every reader accepts the file.

dipy's trackers stop a streamline when its next point would leave the interpolation range,
voxel centres minus/plus half a voxel: ``-0.5 <= i < dim - 0.5`` (the box dipy's readers check
is the same one, ``0 <= i <= dim`` in corner coordinates). A streamline that runs to the edge of
the image (white matter at the bottom slice, as HCP's brain stem is; a brain mask that fills the
volume) therefore ends up to a step short of a face, and now and then within 1e-6 voxels of it.
Stored as float32 millimetres and turned back into voxels by the reader, such a point can land a
rounding error *outside* the box, and ``load_tractogram(..., bbox_valid_check=True)`` (or
``save_tractogram`` with the check) then refuses the whole file: "Voxel space values lower than
0.0". dipy's own workflows save with the check off and leave the reader to fail.

We keep every streamline the tracker returns and fix it at the face instead:

* a point within ``EDGE_TOLERANCE`` voxels of a face (inside, or outside by a rounding miss) is
  moved onto the face less a margin that float32 storage cannot cross (``margin_voxels``: a
  fraction of a micrometre at HCP's 1.25 mm); every other point is left bit for bit as the
  tracker made it. These streamlines are counted as ``snapped``.
* a streamline with points farther outside (no dipy tracker makes one; a future tracker or a
  seed outside the grid could) is cut at the edge: its longest run of points inside the box is
  kept (``cut``), or, with fewer than two points inside, it is dropped (``dropped``).

The counts go into each shard's record and the job's summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.streamlines.array_sequence import ArraySequence
from numpy.typing import NDArray

# Points this close to a face (in voxels) count as on it: ten thousand times float32's error at
# brain coordinates, far below any tracker's step (dipy's defaults: 0.2-0.5 voxels).
EDGE_TOLERANCE = 1e-3
# Relative float32 error budget: storage rounds once, a reader's float32 affine maps a few more.
_FLOAT32_ROUNDINGS = 32


@dataclass(frozen=True)
class EdgeCounts:
    """What keeping a set of streamlines inside the box changed."""

    snapped: int = 0  # streamlines with points moved onto a face (by < EDGE_TOLERANCE voxels)
    cut: int = 0  # streamlines cut to their longest run inside the box
    dropped: int = 0  # streamlines with fewer than two points inside: removed

    def as_dict(self) -> dict[str, int]:
        return {"snapped": self.snapped, "cut": self.cut, "dropped": self.dropped}

    def __add__(self, other: EdgeCounts) -> EdgeCounts:
        return EdgeCounts(
            self.snapped + other.snapped, self.cut + other.cut, self.dropped + other.dropped
        )


def margin_voxels(affine: NDArray[np.float64], shape: tuple[int, ...]) -> float:
    """How far inside a face a snapped point goes: float32's rounding of the largest coordinate
    the grid has (millimetres, and voxels), in voxels of the smallest size, with room to spare."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape[:3]], indexing="ij"))
    corners = corners.reshape(3, -1).T
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    largest_mm = float(np.abs(world).max())
    smallest_voxel = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    eps = float(np.finfo(np.float32).eps)
    in_voxels = max(largest_mm / smallest_voxel, float(max(shape[:3])))
    return min(EDGE_TOLERANCE, _FLOAT32_ROUNDINGS * eps * in_voxels)


def keep_in_grid(
    streamlines: ArraySequence, affine: NDArray[np.float64], shape: tuple[int, ...]
) -> tuple[ArraySequence, EdgeCounts]:
    """``streamlines`` (RAS mm) with every point inside the grid's bounding box, as the module
    docstring says; the input is returned unchanged (the same object) when nothing is near a
    face, which is the common case."""
    if len(streamlines) == 0:
        return streamlines, EdgeCounts()
    stored = streamlines.get_data()  # a compact copy, in streamline order
    points = stored.astype(np.float64, copy=False)
    inverse = np.linalg.inv(affine)
    vox = points @ inverse[:3, :3].T + inverse[:3, 3]
    dims = np.asarray(shape[:3], dtype=np.float64)
    margin = margin_voxels(affine, shape)
    low, high = -0.5 + margin, dims - 0.5 - margin
    near = (vox < low + EDGE_TOLERANCE) | (vox > high - EDGE_TOLERANCE)
    if not near.any():
        return streamlines, EdgeCounts()

    outside = ((vox < -0.5 - EDGE_TOLERANCE) | (vox > dims - 0.5 + EDGE_TOLERANCE)).any(axis=1)
    moved = ((vox < low) | (vox > high)).any(axis=1) & ~outside
    lengths = np.asarray(streamlines._lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    owner = np.repeat(np.arange(len(lengths)), lengths)

    fixed = stored  # ours to change: unmoved points keep the tracker's values, bit for bit
    if moved.any():
        clamped = np.clip(vox[moved], low, high)
        fixed[moved] = clamped @ affine[:3, :3].T + affine[:3, 3]

    snapped = set(np.unique(owner[moved]).tolist())
    crossing = np.unique(owner[outside])
    if crossing.size == 0:
        out = ArraySequence()
        out._data, out._offsets, out._lengths = fixed, offsets, lengths
        return out, EdgeCounts(snapped=len(snapped))

    pieces: list[NDArray[np.floating]] = []
    cut = dropped = 0
    crossing_set = set(crossing.tolist())
    for i, (start, n) in enumerate(zip(offsets, lengths, strict=True)):
        line = fixed[start : start + n]
        if i not in crossing_set:
            pieces.append(line)
            continue
        snapped.discard(i)
        run = _longest_inside_run(~outside[start : start + n])
        if run is None:
            dropped += 1
            continue
        cut += 1
        pieces.append(line[run[0] : run[1]])
    return ArraySequence(pieces), EdgeCounts(len(snapped), cut, dropped)


def _longest_inside_run(inside: NDArray[np.bool_]) -> tuple[int, int] | None:
    """``[start, stop)`` of the longest run of True in ``inside`` (the first of equals), or
    None where no run has two points."""
    padded = np.concatenate([[False], inside, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    starts, stops = edges[0::2], edges[1::2]
    if starts.size == 0:
        return None
    best = int(np.argmax(stops - starts))
    if stops[best] - starts[best] < 2:
        return None
    return int(starts[best]), int(stops[best])
