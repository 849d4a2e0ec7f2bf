"""The task dask runs per chunk: one chunk's objectness from the chunk and its halo.

Its own module so that the consumer can build the graph without loading ITK: the ITK calls
(``objectness_itk``) are imported when the task first runs on a worker, which has already
loaded them while the cluster started (the pipeline's worker modules).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.microstructure.objectness import ObjectnessSpec, halo_crop
from shared.errors import InvalidInput


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
    from consumers.pipelines.microstructure import objectness_itk  # loaded at worker start

    result = objectness_itk.objectness(block, spec, halo_crop(block_info, halo, pad_faces))
    if result.shape != tuple(block_info[None]["chunk-shape"]):
        where = block_info[None]["chunk-location"]
        raise AssertionError(f"chunk {where}: {result.shape} != {block_info[None]['chunk-shape']}")
    return result
