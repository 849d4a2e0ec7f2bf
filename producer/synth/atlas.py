"""A bundle atlas of the synthetic brain (``anatomy.Anatomy``): model bundles that follow the
tracts the phantom's diffusion signal is made of, so that a synthetic subject can be tracked,
segmented and profiled end to end -- tractography -> bundles -> profiles -- with no download.

Each model bundle is a set of streamlines drawn through the tract's own tube (the same centre
curves and radii the signal is built from), in world millimetres of one reference anatomy
(seed 0 by default). Subjects of other seeds are shifted and scaled by a few millimetres and
per cent, which is what the bundles job's whole-brain registration is there to absorb.

Bundles: the callosal body (``CC``), the left and right superior longitudinal fasciculi
(``SLF_L``, ``SLF_R``) and corticospinal tracts (``CST_L``, ``CST_R``). The fornix is left out:
at 30-40 mm it is shorter than RecoBundles' default length cut.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from nibabel.streamlines.array_sequence import ArraySequence

from producer.synth import anatomy
from producer.synth.anatomy import Anatomy
from producer.synth.bundles import write_atlas
from shared.store import ObjectInfo, ObjectStore

F64 = npt.NDArray[np.float64]
STEP_MM = 2.0  # point spacing along a model streamline
STREAMLINES = 60  # per model bundle
BUNDLES = ("CC", "CST_L", "CST_R", "SLF_L", "SLF_R")


def _curve(t: F64, point: Callable[[F64], tuple[F64, F64, F64]], centre: F64) -> F64:
    """Points of ``point(t)`` (relative to the brain centre), resampled every ``STEP_MM``."""
    u, v, w = point(t)
    dense = np.stack([u, v, w], axis=1) + centre
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    at = np.arange(0.0, arc[-1], STEP_MM)
    return np.stack([np.interp(at, arc, dense[:, i]) for i in range(3)], axis=1)


def model_bundles(
    seed: int = 0, streamlines: int = STREAMLINES, rng_seed: int = 0
) -> dict[str, ArraySequence]:
    """The atlas' model bundles, in RAS mm of the anatomy of ``seed``."""
    brain = Anatomy.from_seed(seed)
    centre = np.asarray(brain.centre, dtype=np.float64)
    rng = np.random.default_rng(rng_seed)
    t = np.linspace(0.0, 1.0, 400)
    out: dict[str, ArraySequence] = {name: ArraySequence() for name in BUNDLES}
    for _ in range(streamlines):
        # CC: left to right across the midline, at a random front-back position in the body.
        y0 = rng.uniform(-30.0, 26.0)
        dz = rng.uniform(-2.0, 2.0)

        def cc(s: F64, y0: float = y0, dz: float = dz) -> tuple[F64, F64, F64]:
            u = -36.0 + 72.0 * s
            v = np.full_like(u, y0)
            return u, v, anatomy._cc_centre(u, v) + dz

        out["CC"].append(_curve(t, cc, centre))
        for side, sign in (("L", -1.0), ("R", 1.0)):
            dx, dz = rng.uniform(-4.0, 4.0, size=2)

            def slf(
                s: F64, sign: float = sign, dx: float = dx, dz: float = dz
            ) -> tuple[F64, F64, F64]:
                v = -44.0 + 78.0 * s
                return np.full_like(v, sign * 30.0 + dx), v, anatomy._slf_centre(v) + dz

            out[f"SLF_{side}"].append(_curve(t, slf, centre))
            dx, dy = rng.uniform(-3.5, 3.5, size=2)

            def cst(
                s: F64, sign: float = sign, dx: float = dx, dy: float = dy
            ) -> tuple[F64, F64, F64]:
                w = -30.0 + 72.0 * s
                lateral, _ = anatomy._cst_centre(w)
                return sign * (lateral + dx), np.full_like(w, -14.0 + dy), w

            out[f"CST_{side}"].append(_curve(t, cst, centre))
    return out


def write_tract_atlas(store: ObjectStore, seed: int = 0) -> list[ObjectInfo]:
    """The atlas folder (``NAME.trk`` per model bundle; their union is the registration
    target), on the DWI grid of the HCP geometry."""
    from producer.synth.hcp import get_spec

    spec = get_spec("hcp")
    header = {
        "voxel_to_rasmm": spec.dwi_affine,
        "dimensions": np.asarray(spec.shape, dtype=np.int16),
        "voxel_sizes": np.full(3, spec.voxel_mm, dtype=np.float32),
        "voxel_order": "RAS",
    }
    return write_atlas(store, model_bundles(seed), header)
