"""Hessian objectness (ITK's HessianToObjectnessMeasureImageFilter, Frangi's measure for bright
tubes): its parameters and the halo a chunk needs. Plain data, no ITK: the consumer builds the
graph from these, and only workers load ITK (``objectness_itk``, through ``blocks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Voxels to leave out of a result before and after, per axis (z, y, x).
Crop = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

#: Halo per sigma. ITK's recursive Gaussian is an IIR filter whose tails decay like
#: exp(-1.7 d / sigma), not a kernel cut at a few sigma; and objectness is discontinuous where
#: eigenvalues swap order, so a tiny Hessian difference can move a voxel a lot. Measured on two
#: 96^3 phantoms, sigmas (1, 2), 2x2x2 chunks against one call, max |difference| (objectness is
#: in [0, 1]): 7 sigma 8e-2, 8 sigma 1.3e-4, 9 sigma 3.6e-5, 10 sigma 2.2e-5.
HALO_PER_SIGMA = 9.0


@dataclass(frozen=True)
class ObjectnessSpec:
    """Parameters of ITK's HessianToObjectnessMeasureImageFilter (ObjectDimension 1: tubes)."""

    sigmas: tuple[float, ...]  # voxels; more than one: the voxel-wise maximum over scales
    alpha: float  # plate vs tube (ratio of the two cross-section eigenvalues)
    beta: float  # blob vs tube
    gamma: float  # structureness, in intensity units (Hessian normalised by sigma^2)
    bright: bool = True  # bright fibers on a dark matrix

    @property
    def halo(self) -> int:
        return halo_for(self.sigmas)


def halo_for(sigmas: tuple[float, ...]) -> int:
    """Voxels of context a chunk needs on each side to equal the whole-volume result."""
    return math.ceil(HALO_PER_SIGMA * max(sigmas))


def halo_crop(block_info: dict[Any, Any], halo: int, pad_faces: bool) -> Crop:
    """The halo around one overlapped block (dask's ``block_info``), per axis: on every side
    with a neighbour, and on the faces too when they were padded."""
    where, grid = block_info[None]["chunk-location"], block_info[None]["num-chunks"]
    lo = [halo if pad_faces or i > 0 else 0 for i in where]
    hi = [halo if pad_faces or i < n - 1 else 0 for i, n in zip(where, grid, strict=True)]
    return ((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))
