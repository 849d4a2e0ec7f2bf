"""The label image holds the fibers alone, numbered 1..N: the components the statistics count.

Connected components label every speck of noise above the threshold (tens of thousands on a
noisy volume, against a few dozen fibers); a viewer would show them all. After the components
are measured, the consumer builds one lookup table from the merged moments (sizes are known per
global label): components under ``min_fiber_voxels`` map to 0, the fibers to 1..N in the order
of their first voxel in C order, and every worker applies it to its own blocks. That order is
the one ``scipy.ndimage.label`` numbers in, so it does not depend on the chunking, and the
result equals a serial label, size filter and order-keeping renumbering of the same mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.microstructure.fiberstats import FIRST, fiber_mask


def lookup(moments: NDArray[np.float64], min_fiber_voxels: int) -> NDArray[np.uint32]:
    """Old label -> new label (0: not a fiber), from merged moments (row = old label)."""
    fibers = np.flatnonzero(fiber_mask(moments, min_fiber_voxels))
    ordered = fibers[np.argsort(moments[fibers, FIRST], kind="stable")]
    table = np.zeros(moments.shape[0], dtype=np.uint32)
    table[ordered] = np.arange(1, ordered.size + 1, dtype=np.uint32)
    return table


def renumber(moments: NDArray[np.float64], table: NDArray[np.uint32]) -> NDArray[np.float64]:
    """The moments of the fibers alone, in their new order (row k = new label k + 1)."""
    kept = np.flatnonzero(table)
    out = np.empty((kept.size, moments.shape[1]))
    out[table[kept].astype(np.intp) - 1] = moments[kept]
    return out


def apply(block: NDArray[Any], table: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """Runs on a worker, once per label block."""
    out: NDArray[np.uint32] = table[block]
    return out
