"""The white matter's bounding box: the part of the grid tracking can reach.

The fODF coefficients are zero outside the white-matter mask (CSD is fitted there only), and a
point gets a direction only where one of the 8 voxels its trilinear interpolation reads is in
the mask; it then steps at most ``step_size`` further. So no streamline point lies farther than
``1 + step_size / voxel`` voxels from the mask, and the volumes tracking reads (coefficients
and FA) can be cut to the mask's bounding box grown by ``margin_voxels`` with the same
streamlines: dipy finds the same zeros inside the box as it found beyond it. Deterministic
tracking only: dipy's probabilistic tracker seeds its draws from each seed's voxel coordinates,
which the box moves, so it keeps the whole grid (same draws as the serial call).
The box is what goes to every worker, a fraction of the whole grid (45 float64 coefficients
per voxel: 1.3 GB at HCP size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def margin_voxels(step_size_mm: float, zooms: tuple[float, ...]) -> int:
    """Voxels kept around the mask on every side: 1 for the interpolation, enough for the last
    step, and 1 to spare."""
    return 2 + math.ceil(step_size_mm / min(zooms))


@dataclass(frozen=True)
class Box:
    """``[low, high)`` voxel bounds per axis inside a grid of ``grid_shape``."""

    low: tuple[int, int, int]
    high: tuple[int, int, int]
    grid_shape: tuple[int, int, int]

    @classmethod
    def whole(cls, shape: tuple[int, ...]) -> Box:
        grid = (int(shape[0]), int(shape[1]), int(shape[2]))
        return cls((0, 0, 0), grid, grid)

    @classmethod
    def around(cls, mask: NDArray[np.bool_], margin: int) -> Box:
        """The bounding box of ``mask``'s voxels grown by ``margin``, clipped to the grid; the
        whole grid for an empty mask."""
        whole = cls.whole(mask.shape)
        found = np.argwhere(mask)
        if len(found) == 0:
            return whole
        shape = whole.grid_shape
        low = np.maximum(found.min(axis=0) - margin, 0)
        high = np.minimum(found.max(axis=0) + 1 + margin, shape)
        return cls(
            (int(low[0]), int(low[1]), int(low[2])),
            (int(high[0]), int(high[1]), int(high[2])),
            shape,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = (b - a for a, b in zip(self.low, self.high, strict=True))
        return (x, y, z)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        x, y, z = (slice(a, b) for a, b in zip(self.low, self.high, strict=True))
        return (x, y, z)

    @property
    def fraction(self) -> float:
        """The box's share of the grid's voxels."""
        return float(np.prod(self.shape)) / float(np.prod(self.grid_shape))

    def affine(self, grid_affine: NDArray[np.float64]) -> NDArray[np.float64]:
        """The box's voxel -> world affine: the grid's, moved to the box's first voxel."""
        moved = np.array(grid_affine, dtype=np.float64, copy=True)
        moved[:3, 3] = grid_affine[:3, :3] @ np.asarray(self.low, dtype=np.float64)
        moved[:3, 3] += grid_affine[:3, 3]
        return moved

    def cut(self, volume: NDArray[np.generic]) -> NDArray[np.generic]:
        """A contiguous copy of ``volume``'s box (its leading three axes)."""
        return np.ascontiguousarray(volume[self.slices])
