"""Hessian objectness (Frangi-style vesselness for bright tubes) with ITK: its parameters, the
halo a chunk needs, and the per-chunk function dask calls.

The ITK calls live in ``itk_objectness`` (imported once per worker at cluster start, never by
the consumer): ``objectness`` is the pipeline's (a chunk's voxels are bit for bit those of one
call on the whole volume), ``objectness_whole`` is ITK's Hessian filter in one call, the
reference the tests and the benchmark hold the chunked result to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInput

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


def objectness(
    volume: NDArray[Any], spec: ObjectnessSpec, crop: Crop | None = None
) -> NDArray[np.float32]:
    """Objectness of a 3D array (z, y, x) in one ITK call per sigma; float32 in [0, 1].
    ``crop``: voxels left out of the result before and after, per axis (a chunk's halo)."""
    from consumers.pipelines import itk_objectness  # loaded at worker start; a lookup here

    return itk_objectness.objectness(volume, spec, crop)


def objectness_whole(volume: NDArray[Any], spec: ObjectnessSpec) -> NDArray[np.float32]:
    """ITK's ``HessianRecursiveGaussianImageFilter`` and the same measure on all of ``volume``
    in one call per sigma: what the chunked result must equal."""
    from consumers.pipelines import itk_objectness

    return itk_objectness.objectness_whole(volume, spec)


def objectness_block(
    block: NDArray[Any],
    spec: ObjectnessSpec,
    halo: int,
    pad_faces: bool,
    block_info: dict[Any, Any] | None = None,
) -> NDArray[np.float32]:
    """One chunk of the objectness from the chunk plus its halo (dask ``overlap`` then
    ``map_blocks``): the halo's own objectness is never computed, only the Gaussian passes
    along its axis. A halo lies on every side with a neighbour, and on the volume's faces too
    when ``pad_faces`` (mirrored).

    Non-finite input fails the job: any value put in its place would bend the Hessian for
    sigmas around it, silently."""
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = int(block.size - np.count_nonzero(np.isfinite(block)))
        raise InvalidInput(f"the volume holds NaN or infinite values ({bad} in one chunk)")
    assert block_info is not None
    result = objectness(block, spec, halo_crop(block_info, halo, pad_faces))
    if result.shape != tuple(block_info[None]["chunk-shape"]):
        where = block_info[None]["chunk-location"]
        raise AssertionError(f"chunk {where}: {result.shape} != {block_info[None]['chunk-shape']}")
    return result


def halo_crop(block_info: dict[Any, Any], halo: int, pad_faces: bool) -> Crop:
    """The halo around one overlapped block (dask's ``block_info``), per axis: on every side
    with a neighbour, and on the faces too when they were padded."""
    where, grid = block_info[None]["chunk-location"], block_info[None]["num-chunks"]
    lo = [halo if pad_faces or i > 0 else 0 for i in where]
    hi = [halo if pad_faces or i < n - 1 else 0 for i, n in zip(where, grid, strict=True)]
    return ((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))
