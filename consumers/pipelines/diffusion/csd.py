"""Constrained spherical deconvolution: the single-fibre response, and the fit across a cluster.

dipy fits CSD voxel by voxel (``multi_voxel_fit`` loops over the mask), so a fit of any subset
of voxels gives, for each voxel, exactly what the whole-volume fit gives. The white-matter
voxels are flattened to one (voxels, volumes) array, split into contiguous chunks, scattered
once, and each task fits its chunk with the same model; the coefficients come back in mask
order and fill a volume that equals ``ConstrainedSphericalDeconvModel(...).fit(data, mask)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from dipy.reconst.csdeconv import (
    ConstrainedSphericalDeconvModel,
    mask_for_response_ssst,
    response_from_mask_ssst,
)
from numpy.typing import NDArray

from consumers.pipelines.diffusion.box import Box
from consumers.pipelines.fanout import TaskStats, map_scattered, part_count, worker_count
from shared.errors import InvalidInput

CHUNKS_PER_WORKER = 4  # a few per worker: a fast worker takes over a slow one's last share


def n_coefficients(sh_order_max: int) -> int:
    """Coefficients of the symmetric real SH basis up to ``sh_order_max``."""
    return (sh_order_max + 1) * (sh_order_max + 2) // 2


@dataclass(frozen=True)
class Response:
    """A single-fibre response as dipy takes it: a prolate tensor's eigenvalues and its S0."""

    evals: tuple[float, float, float]  # mm^2/s
    s0: float
    ratio: float  # smallest / largest eigenvalue
    method: str  # "mask" or "auto"
    voxels: int  # how many voxels were averaged

    def as_dipy(self) -> tuple[NDArray[np.float64], float]:
        return np.asarray(self.evals, dtype=np.float64), self.s0

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "evals": [float(f"{e:.8g}") for e in self.evals],
            "s0": round(self.s0, 6),
            "ratio": round(self.ratio, 6),
            "voxels": self.voxels,
        }


def _checked(response: Any, ratio: Any, method: str, voxels: int, hint: str) -> Response:
    evals = np.asarray(response[0], dtype=np.float64).ravel()
    s0 = float(response[1])
    if voxels == 0 or evals.size != 3 or not np.isfinite(evals).all() or not np.isfinite(s0):
        raise InvalidInput(f"no voxel to estimate the fibre response from ({hint})")
    if (evals <= 0).any() or s0 <= 0:
        raise InvalidInput(
            f"the estimated fibre response is not a valid tensor (evals {evals.tolist()}, "
            f"S0 {s0:g}); {hint}"
        )
    e1, e2, e3 = (float(e) for e in evals)
    return Response((e1, e2, e3), s0, float(ratio), method, voxels)


def response_from_mask(
    gtab: Any, data: NDArray[np.float32], mask: NDArray[np.bool_], fa_thr: float
) -> Response:
    """dipy's ``response_from_mask_ssst`` over ``mask`` (white matter with FA > ``fa_thr``)."""
    voxels = int(np.count_nonzero(mask))
    hint = f"no white-matter voxel has FA > {fa_thr:g}; lower response_fa_thr"
    if voxels == 0:
        raise InvalidInput(f"no voxel to estimate the fibre response from ({hint})")
    response, ratio = response_from_mask_ssst(gtab, data, mask)
    return _checked(response, ratio, "mask", voxels, hint)


def response_auto(gtab: Any, data: NDArray[np.float32], roi_radii: int, fa_thr: float) -> Response:
    """dipy's ``auto_response_ssst``: voxels with FA > ``fa_thr`` in a cube at the volume centre.

    Written as the two calls ``auto_response_ssst`` makes, so the voxel count can be reported
    without fitting the cube's tensors twice.
    """
    with warnings.catch_warnings():
        # dipy warns (and returns NaN) when the cube has no such voxel; _checked says it better.
        warnings.simplefilter("ignore", UserWarning)
        mask = mask_for_response_ssst(gtab, data, roi_radii=roi_radii, fa_thr=fa_thr)
        response, ratio = response_from_mask_ssst(gtab, data, mask)
    hint = (
        f"no voxel with FA > {fa_thr:g} within {roi_radii} voxels of the volume centre; "
        "raise response_roi_radii, lower response_fa_thr, or use response=mask"
    )
    return _checked(response, ratio, "auto", int(np.count_nonzero(mask)), hint)


def make_model(gtab: Any, response: Response, sh_order_max: int) -> Any:
    with warnings.catch_warnings():
        # "more parameters than data points" is refused before any cluster starts (load).
        warnings.simplefilter("ignore", UserWarning)
        return ConstrainedSphericalDeconvModel(gtab, response.as_dipy(), sh_order_max=sh_order_max)


def fit_chunk(
    chunk: NDArray[np.float32], gtab: Any, response: Response, sh_order_max: int
) -> NDArray[np.float64]:
    """Runs on a worker: the SH coefficients of a (voxels, volumes) chunk.

    Module-level so it pickles by reference. The model is rebuilt here (milliseconds) rather
    than shipped: it is a function of the gradient table and the response alone.
    """
    model = make_model(gtab, response, sh_order_max)
    return np.asarray(model.fit(chunk).shm_coeff, dtype=np.float64)


@dataclass
class CsdFit:
    coeffs: NDArray[np.float64]  # (mask voxels, coefficients), in mask (C) order
    mask: NDArray[np.bool_]
    chunks: int
    tasks: list[TaskStats]  # what each chunk's fit cost, and where it ran

    def volume(self, box: Box | None = None) -> NDArray[np.float64]:
        """The coefficients on the grid, zero outside the mask: the whole grid, or ``box`` of it
        (which must hold every mask voxel: the mask's order is the same inside it)."""
        box = box or Box.whole(self.mask.shape)
        inside = self.mask[box.slices]
        if int(np.count_nonzero(inside)) != len(self.coeffs):
            raise ValueError("the box does not hold every mask voxel")
        out = np.zeros((*box.shape, self.coeffs.shape[1]), dtype=np.float64)
        out[inside] = self.coeffs
        return out

    @property
    def shm_coeff(self) -> NDArray[np.float64]:
        """What dipy's ``fit(data, mask).shm_coeff`` holds: (x, y, z, coefficients)."""
        return self.volume()


def fit_csd(
    client: Any,
    data: NDArray[np.float32],
    mask: NDArray[np.bool_],
    gtab: Any,
    response: Response,
    sh_order_max: int,
    chunks: int | None = None,
) -> CsdFit:
    """CSD of the ``mask`` voxels of ``data`` across the cluster behind ``client``."""
    voxels = data[mask]  # (n_voxels, n_volumes), C order = mask order
    n_chunks = part_count(chunks, CHUNKS_PER_WORKER, worker_count(client), len(voxels))
    # array_split spreads the remainder over the first chunks: no voxel is dropped.
    parts = np.array_split(voxels, n_chunks)
    del voxels
    # Each chunk travels once (and again only if its worker dies); a chunk fit is a pure
    # function of its data, so a failed try is simply run again.
    labels = [f"CSD chunk {i + 1}/{n_chunks}" for i in range(n_chunks)]
    results = map_scattered(client, fit_chunk, parts, gtab, response, sh_order_max, labels=labels)
    del parts

    coeffs = np.concatenate(results).astype(np.float64, copy=False)
    return CsdFit(coeffs, mask, n_chunks, results.stats)
