"""An analytic brain, defined in world millimetres so that every grid samples the same anatomy.

The diffusion grid (soft tissue fractions: partial volume at boundaries) and the finer T1 grid
(hard FreeSurfer labels) both evaluate the signed distances below at their own voxel centres, so
a label resampled to the diffusion grid by world coordinates lands on the matching tissue. Every
method takes flat arrays of world coordinates and is pointwise, which is what lets callers work
slab by slab without the result depending on the slab size.

Coordinates are RAS+ (x right, y anterior, z superior). Internal structures are placed relative
to the brain centre, with sizes loosely taken from an adult brain in MNI space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
Mask = npt.NDArray[np.bool_]

# FreeSurfer colour-LUT values of the aseg structures we draw (cortex adds 1000/2000 + DK index).
LABELS: dict[int, str] = {
    0: "Unknown",
    2: "Left-Cerebral-White-Matter",
    4: "Left-Lateral-Ventricle",
    10: "Left-Thalamus",
    14: "3rd-Ventricle",
    16: "Brain-Stem",
    24: "CSF",
    41: "Right-Cerebral-White-Matter",
    43: "Right-Lateral-Ventricle",
    49: "Right-Thalamus",
    77: "WM-hypointensities",
    250: "Fornix",
    251: "CC_Posterior",
    252: "CC_Mid_Posterior",
    253: "CC_Central",
    254: "CC_Mid_Anterior",
    255: "CC_Anterior",
}
WM_LABELS: frozenset[int] = frozenset({2, 41, 16, 77, 250, 251, 252, 253, 254, 255})
# Desikan-Killiany indices as aparc uses them; 4 (corpuscallosum) is never assigned by FreeSurfer.
_DK = np.array([i for i in range(1, 36) if i != 4], dtype=np.int32)

CSF_RIM_MM = 3.0  # subarachnoid CSF between the brain surface and the cortex
CORTEX_MM = 5.0  # a little thick, so that a 6 mm grid still has mostly-grey voxels
N_FIBERS = 3  # at most three populations meet (callosal, association, corticospinal)

# Diffusivities in mm^2/s: (parallel, perpendicular) per bundle; background is less coherent.
_BUNDLE_EVALS = {
    "cc": (1.8e-3, 0.25e-3),
    "slf": (1.6e-3, 0.35e-3),
    "cst": (1.7e-3, 0.30e-3),
    "fornix": (1.7e-3, 0.30e-3),
    "background": (1.5e-3, 0.45e-3),
}

# Corpus callosum: an arched slab across the midline, rising laterally like the callosal radiation.
_CC_Y = (-38.0, 34.0)
_CC_HALF_THICK = 3.5
_CC_HALF_WIDTH = 40.0  # how far callosal fibres run laterally before they join the background
_CC_LABEL_HALF_WIDTH = 6.0  # FreeSurfer labels only the midline part as CC
_STEM_LABEL_TOP = -12.0  # above this the stem blends into cerebral white matter
_BACKGROUND_SOURCE = np.array([0.0, -14.0, -20.0])  # corona radiata fans out from here


@dataclass(frozen=True)
class Tissue:
    """Per-point tissue fractions and white-matter fibre populations (slot 0 filled first)."""

    wm: F32
    gm: F32
    csf: F32
    dirs: F32  # (n, N_FIBERS, 3) unit vectors, zeros in unused slots
    fracs: F32  # (n, N_FIBERS) share of the WM compartment, summing to 1 where wm > 0
    lam_par: F32  # (n, N_FIBERS)
    lam_perp: F32  # (n, N_FIBERS)


@dataclass(frozen=True)
class _Distances:
    """Signed distances in mm, positive inside each structure."""

    ell: F64  # the cerebral ellipsoid
    eff: F64  # depth below the cortical surface, counting the interhemispheric fissure
    vent: F64  # lateral ventricles (either side)
    v3: F64
    thal: F64
    cc: F64
    fornix: F64
    stem: F64
    blob: F64
    slf: F64
    cst: F64


def ramp(d: F64, h: float) -> F64:
    """Fraction of a voxel of size ``h`` lying inside a boundary at signed distance ``d``.

    Exact for an axis-aligned plane; ``h == 0`` gives the hard inside test used for labels, so a
    label and a soft fraction agree on which side of 0.5 a voxel centre falls.
    """
    if h <= 0:
        return (d > 0).astype(np.float64)
    return np.clip(d / h + 0.5, 0.0, 1.0)


def _ellipsoid(u: F64, v: F64, w: F64, axes: tuple[float, float, float]) -> F64:
    # (1 - rho) / |grad rho| is a first-order signed distance, good enough for a one-voxel ramp.
    a, b, c = axes
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (w / c**2) ** 2)
    scale = np.maximum(grad / np.maximum(rho, 1e-9), 1.0 / max(axes))
    return np.asarray((1.0 - rho) / scale, dtype=np.float64)


def _unit(vec: F64) -> F64:
    norm = np.linalg.norm(vec, axis=-1, keepdims=True)
    return np.asarray(vec / np.maximum(norm, 1e-12), dtype=np.float64)


def _cc_centre(u: F64, v: F64) -> F64:
    return 17.0 + 3.0 * (1.0 - (v / 40.0) ** 2) + 0.004 * u**2


def _fornix_centre(v: F64) -> F64:
    return 10.0 - 0.008 * (v + 9.0) ** 2


def _slf_centre(v: F64) -> F64:
    return 24.0 - 0.003 * v**2


def _cst_centre(w: F64) -> tuple[F64, F64]:
    """Lateral offset of the corticospinal tract and its slope d|x|/dz: from the brain stem out
    through the internal capsule (lateral to the thalamus) to the motor cortex."""
    s = 1.0 / (1.0 + np.exp(-(w + 12.0) / 4.0))
    return 5.0 + 21.0 * s, 21.0 * s * (1.0 - s) / 4.0


@dataclass(frozen=True)
class Anatomy:
    """One subject's geometry; the seed moves and scales the brain and places WM lesions."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    blobs: tuple[tuple[float, float, float, float], ...]  # (u, v, w, radius) from the centre
    phases: tuple[float, ...]  # of the smooth diffusivity modulation

    @classmethod
    def from_seed(cls, seed: int) -> Anatomy:
        rng = np.random.default_rng([seed, 0])
        scale = 1.0 + rng.uniform(-0.03, 0.03)
        jitter = rng.uniform(-2.0, 2.0, size=3)
        blobs = tuple(
            (
                float(rng.choice([-1.0, 1.0]) * rng.uniform(18.0, 28.0)),
                float(rng.uniform(-30.0, 25.0)),
                float(rng.uniform(4.0, 26.0)),
                float(rng.uniform(3.5, 5.0)),
            )
            for _ in range(5)
        )
        return cls(
            centre=(float(jitter[0]), -8.0 + float(jitter[1]), 6.0 + float(jitter[2])),
            axes=(68.0 * scale, 85.0 * scale, 62.0 * scale),
            blobs=blobs,
            phases=tuple(float(p) for p in rng.uniform(0.0, 2 * np.pi, size=6)),
        )

    def _relative(self, x: F64, y: F64, z: F64) -> tuple[F64, F64, F64]:
        cx, cy, cz = self.centre
        return x - cx, y - cy, z - cz

    def _distances(self, u: F64, v: F64, w: F64) -> _Distances:
        au = np.abs(u)
        ell = _ellipsoid(u, v, w, self.axes)
        # The fissure separates the hemispheres above the callosum, and fully at the poles.
        in_cc_y = (v > _CC_Y[0]) & (v < _CC_Y[1])
        floor = np.where(in_cc_y, _cc_centre(np.zeros_like(v), v) + _CC_HALF_THICK, -np.inf)
        eff = np.where(w > floor, np.minimum(ell, au + 1.5), ell)
        cc = np.minimum.reduce(
            [
                _CC_HALF_THICK - np.abs(w - _cc_centre(u, v)),
                v - _CC_Y[0],
                _CC_Y[1] - v,
                _CC_HALF_WIDTH - au,
            ]
        )
        fornix = np.minimum.reduce([3.0 - np.hypot(u, w - _fornix_centre(v)), v + 28.0, 10.0 - v])
        stem_xy = _ellipsoid(u, v + 16.0, np.zeros_like(w), (10.0, 9.0, 1.0))
        stem = np.minimum(stem_xy, -4.0 - w)
        blob = np.full_like(u, -np.inf)
        for bu, bv, bw, r in self.blobs:
            blob = np.maximum(blob, r - np.sqrt((u - bu) ** 2 + (v - bv) ** 2 + (w - bw) ** 2))
        slf = np.minimum.reduce([7.0 - np.hypot(au - 30.0, w - _slf_centre(v)), v + 50.0, 40.0 - v])
        cst_x, _ = _cst_centre(w)
        return _Distances(
            ell=ell,
            eff=eff,
            vent=_ellipsoid(au - 10.0, v - 2.0, w - 6.0, (6.0, 22.0, 8.0)),
            v3=_ellipsoid(u, v + 11.0, w + 2.0, (2.5, 9.0, 7.0)),
            thal=_ellipsoid(au - 11.0, v + 14.0, w + 2.0, (7.0, 13.0, 8.0)),
            cc=cc,
            fornix=fornix,
            stem=stem,
            blob=blob,
            slf=slf,
            cst=6.0 - np.hypot(au - cst_x, v + 14.0),
        )

    def tissue(self, x: F64, y: F64, z: F64, voxel_mm: float) -> Tissue:
        """Partial-volume fractions for voxels of size ``voxel_mm`` centred at the points."""
        u, v, w = self._relative(x, y, z)
        d = self._distances(u, v, w)

        def r(dist: F64) -> F64:
            return ramp(dist, voxel_mm)

        brain = r(d.ell)
        non_csf = r(d.eff - CSF_RIM_MM)
        deep = r(d.eff - CSF_RIM_MM - CORTEX_MM)
        forced_wm = 1.0 - (1.0 - r(d.cc)) * (1.0 - r(d.fornix))
        vent = np.clip(r(d.vent) + r(d.v3), 0.0, 1.0) * (1.0 - forced_wm)
        thal = r(d.thal) * (1.0 - forced_wm) * (1.0 - vent)
        stem = r(d.stem)
        keep = 1.0 - stem  # the brain stem is white matter wherever it reaches
        csf = keep * (brain - non_csf + deep * vent)
        gm = keep * (non_csf - deep + deep * thal)
        wm = stem + keep * deep * (1.0 - vent - thal)
        dirs, fracs, lam_par, lam_perp = self._fibres(u, v, w, d)
        return Tissue(
            wm=wm.astype(np.float32),
            gm=gm.astype(np.float32),
            csf=csf.astype(np.float32),
            dirs=dirs,
            fracs=fracs,
            lam_par=lam_par,
            lam_perp=lam_perp,
        )

    def _fibres(self, u: F64, v: F64, w: F64, d: _Distances) -> tuple[F32, F32, F32, F32]:
        n = u.shape[0]
        dirs = np.zeros((n, N_FIBERS, 3), dtype=np.float64)
        lam = np.zeros((n, N_FIBERS, 2), dtype=np.float64)
        count = np.zeros(n, dtype=np.int64)
        sign = np.where(u < 0, -1.0, 1.0)
        _, cst_slope = _cst_centre(w)
        fields: dict[str, tuple[Mask, Callable[[Mask], F64]]] = {
            "cc": (d.cc > 0, lambda m: np.stack([np.ones(m.sum()), 0 * u[m], 0.008 * u[m]], 1)),
            "slf": (d.slf > 0, lambda m: np.stack([0 * u[m], np.ones(m.sum()), -0.006 * v[m]], 1)),
            "cst": (
                d.cst > 0,
                lambda m: np.stack([sign[m] * cst_slope[m], 0 * u[m], np.ones(m.sum())], 1),
            ),
            "fornix": (
                d.fornix > 0,
                lambda m: np.stack([0 * u[m], np.ones(m.sum()), -0.016 * (v[m] + 9.0)], 1),
            ),
        }
        for name, (member, direction) in fields.items():
            take = member & (count < N_FIBERS)
            idx = np.nonzero(take)[0]
            slot = count[idx]
            dirs[idx, slot] = _unit(direction(take))
            lam[idx, slot] = _BUNDLE_EVALS[name]
            count[idx] += 1
        idx = np.nonzero(count == 0)[0]
        rel = np.stack([u[idx], v[idx], w[idx]], 1) - _BACKGROUND_SOURCE
        dirs[idx, 0] = _unit(rel)
        lam[idx, 0] = _BUNDLE_EVALS["background"]
        count[idx] = 1
        fracs = (np.arange(N_FIBERS)[None, :] < count[:, None]) / count[:, None]
        # Smooth, seed-dependent variation of diffusivity, plus WM lesions (higher, less
        # anisotropic diffusion); both are pointwise so slabs agree with the whole volume.
        p = self.phases
        mod_par = 1.0 + 0.08 * np.sin(u / 17 + p[0]) * np.sin(v / 23 + p[1]) * np.sin(w / 19 + p[2])
        mod_perp = 1.0 + 0.1 * np.sin(u / 13 + p[3]) * np.sin(v / 29 + p[4]) * np.sin(w / 21 + p[5])
        lesion = np.where(d.blob > 0, 1.0, 0.0)
        lam_par = lam[..., 0] * (mod_par * (1.0 + 0.1 * lesion))[:, None]
        lam_perp = lam[..., 1] * (mod_perp * (1.0 + 0.8 * lesion))[:, None]
        return (
            dirs.astype(np.float32),
            fracs.astype(np.float32),
            lam_par.astype(np.float32),
            lam_perp.astype(np.float32),
        )

    def labels(self, x: F64, y: F64, z: F64) -> I32:
        """FreeSurfer aparc+aseg labels at the points (hard boundaries, same geometry)."""
        u, v, w = self._relative(x, y, z)
        d = self._distances(u, v, w)
        left = u < 0
        hemi_wm = np.where(left, 2, 41).astype(np.int32)
        lab = np.zeros(u.shape, dtype=np.int32)
        brain = d.ell > 0
        lab[brain] = 24
        cortex = brain & (d.eff > CSF_RIM_MM)
        lab[cortex] = self._parcel(u, v, w)[cortex]
        deep = brain & (d.eff > CSF_RIM_MM + CORTEX_MM)
        lab[deep] = hemi_wm[deep]
        forced = (d.cc > 0) | (d.fornix > 0)
        vent = deep & ~forced & (d.vent > 0)
        lab[vent] = np.where(left, 4, 43)[vent]
        v3 = deep & ~forced & ~vent & (d.v3 > 0)
        lab[v3] = 14
        thal = deep & ~forced & ~vent & ~v3 & (d.thal > 0)
        lab[thal] = np.where(left, 10, 49)[thal]
        cc = deep & (d.cc > 0) & (np.abs(u) <= _CC_LABEL_HALF_WIDTH)
        part = np.clip(((v - _CC_Y[0]) / (_CC_Y[1] - _CC_Y[0]) * 5).astype(np.int32), 0, 4)
        lab[cc] = 251 + part[cc]  # 251 posterior ... 255 anterior
        lab[deep & (d.fornix > 0)] = 250
        lesion = ((lab == 2) | (lab == 41)) & (d.blob > 0)
        lab[lesion] = 77
        stem = d.stem > 0
        lab[stem] = np.where(w < _STEM_LABEL_TOP, 16, hemi_wm)[stem]
        return lab

    def _parcel(self, u: F64, v: F64, w: F64) -> I32:
        # Cells of (angle from the anterior axis) x (elevation): contiguous, plausible-sized
        # gyri; 35 cells share 34 Desikan-Killiany labels.
        radius = np.maximum(np.sqrt(u**2 + v**2 + w**2), 1e-9)
        alpha = np.arccos(np.clip(v / radius, -1.0, 1.0))
        beta = np.arctan2(w, np.abs(u))
        a = np.minimum((alpha / np.pi * 7).astype(np.int32), 6)
        b = np.clip(((beta + np.pi / 2) / np.pi * 5).astype(np.int32), 0, 4)
        cell = np.minimum(a * 5 + b, len(_DK) - 1)
        base = np.where(u < 0, 1000, 2000)
        return (base + _DK[cell]).astype(np.int32)
