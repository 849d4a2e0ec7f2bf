"""The gradient table of a diffusion series (``.bval``/``.bvec``, HCP's ``bvals``/``bvecs``):
parsed and checked.

The files are FSL-style text: one row of b-values, and directions 3xN as HCP and FSL write them
or Nx3 as some exporters do. They are checked against the DWI's volume count before dipy sees
them, so every mistake becomes ``InvalidInput`` naming the file and, where there is one, the
first offending volume (dipy's own unit-length check, with its tolerance, names none).
Directions reach dipy as written, in the image's voxel axes as dipy reads them: nothing here
flips or rotates them.

Fetching the two files from the object store (size limit, plain ASCII) is ``nifti.py``'s part;
this module only parses and checks text. Messages name the files by their keys.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInput, one_line_reason


@dataclass(frozen=True)
class GradientFiles:
    """The keys of the two text files of the gradient table, and of the DWI series whose
    volumes they describe: what every message names."""

    bval: str
    bvec: str
    dwi: str


# Gradient directions of diffusion-weighted volumes must be unit vectors (dipy's tolerance).
_UNIT_ATOL = 0.01


def _parse_table(text: str, key: str, *, allow_nonfinite: bool = False) -> NDArray[np.float64]:
    try:
        table = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InvalidInput(f"{key} is not a table of numbers ({one_line_reason(exc)})") from None
    if table.size == 0:
        raise InvalidInput(f"{key} is empty")
    if not allow_nonfinite and not np.isfinite(table).all():
        raise InvalidInput(f"{key} contains NaN or infinite values")
    return table


def read_gradients(
    bvals_text: str,
    bvecs_text: str,
    n_volumes: int | None,
    b0_threshold: float,
    names: GradientFiles,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """bvals (N,) and bvecs (N, 3) from FSL-style text, checked against the DWI's volume count
    (or, with ``n_volumes`` None, against each other only: the check before any download).

    bvecs may be 3xN (HCP, FSL) or Nx3 (some exporters); 3xN wins when both fit (N == 3).
    A NaN direction is tolerated (as zero) only for a b0 volume, which has no direction:
    some exporters write one there, dipy's own ``small_64D`` sample among them.
    """
    bvals_table = _parse_table(bvals_text, names.bval)
    if min(bvals_table.shape) != 1:
        raise InvalidInput(f"{names.bval} must be one row of b-values, got {bvals_table.shape}")
    bvals = bvals_table.ravel()
    counted = f"{names.dwi} has {n_volumes} volumes"
    if n_volumes is None:
        n_volumes = int(bvals.size)
        counted = f"{names.bval} has {n_volumes} b-values"
    elif bvals.size != n_volumes:
        raise InvalidInput(
            f"{names.bval} has {bvals.size} values but {names.dwi} has {n_volumes} volumes"
        )
    if (bvals < 0).any():
        raise InvalidInput(f"{names.bval} contains negative b-values")

    table = _parse_table(bvecs_text, names.bvec, allow_nonfinite=True)
    if table.shape[0] == 3 and table.shape[1] == n_volumes:
        bvecs = table.T
    elif table.shape[1] == 3 and table.shape[0] == n_volumes:
        bvecs = table
    elif 3 in table.shape:
        n_dirs = table.shape[1] if table.shape[0] == 3 else table.shape[0]
        raise InvalidInput(f"{names.bvec} has {n_dirs} directions but {counted}")
    else:
        raise InvalidInput(
            f"{names.bvec} must be 3xN (or Nx3), got {table.shape[0]}x{table.shape[1]}"
        )
    bvecs = np.array(bvecs, dtype=np.float64)  # a copy: the b0 rows may be rewritten
    bad = ~np.isfinite(bvecs).all(axis=1)
    weighted = bvals > b0_threshold
    if (bad & weighted).any():
        first = int(np.flatnonzero(bad & weighted)[0])
        raise InvalidInput(
            f"{names.bvec} contains NaN or infinite values for {int((bad & weighted).sum())} "
            f"diffusion-weighted volume(s), the first being volume {first} (b={bvals[first]:g})"
        )
    bvecs[bad] = 0.0
    # dipy's own check, with its tolerance, but naming the offending volume.
    lengths = np.linalg.norm(bvecs, axis=1)
    off = weighted & (np.abs(lengths - 1.0) > _UNIT_ATOL)
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise InvalidInput(
            f"{names.bvec}: the direction of volume {first} (b={bvals[first]:g}) has length "
            f"{lengths[first]:.3g}, not 1 ({int(off.sum())} such volume(s))"
        )
    return bvals, bvecs


def gradient_table_for(
    bvals: NDArray[np.float64],
    bvecs: NDArray[np.float64],
    b0_threshold: float,
    names: GradientFiles,
) -> Any:
    """A dipy GradientTable, with dipy's own objections turned into InvalidInput."""
    from dipy.core.gradients import gradient_table

    try:
        gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)
    except ValueError as exc:
        raise InvalidInput(
            f"dipy rejected the gradient table ({names.bval}, {names.bvec}): {one_line_reason(exc)}"
        ) from None
    if not gtab.b0s_mask.any():
        raise InvalidInput(
            f"{names.bval} has no b0 volume (none <= b0_threshold {b0_threshold:g}); "
            "a b0 is needed to normalise the signal"
        )
    return gtab
