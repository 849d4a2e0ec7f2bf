"""A synthetic X-ray micro-CT volume of a unidirectional fiber composite, as a Zarr v3 array.

Fibers are straight cylinders along one common direction (``tilt_deg`` from the z axis), each
misaligned from it by up to ``misalignment_deg``, with radii drawn uniformly from ``radius``.
They are placed by random sequential addition (never closer than ``gap`` voxels surface to
surface) until their cross-sections cover ``volume_fraction`` of the mid plane, or until
``fibers`` of them are placed. Intensities follow what a reconstruction of glass fibers in a
polymer looks like: partial-volume edges, a Gaussian point-spread function, mild cupping (the
centre of the field of view a few percent darker) and Gaussian noise, stored as uint16.

Stress options (``producer.synth.packing``): ``contact``, a share of the fibers placed touching
an earlier one (surfaces ``gap`` apart, which may then be 0 or negative), and
``crossing_share``, a share laid along a second direction ``crossing_deg`` from the first, the
two populations passing through each other. ``stress_spec`` is issue #19's stress phantom.

The ground truth goes beside the volume, in a ``_truth`` folder (``ct/s1.zarr`` ->
``ct/_truth/s1.zarr``): uint8, 1 where a voxel's centre lies inside a fiber. Not as a sibling
array, because a campaign that lists ``ct/`` enqueues every child holding a ``zarr.json``, and
would segment the masks too; ``_truth`` itself holds none.

The volume is rendered in z slabs (bounded memory), and noise is seeded per z plane, so the
output does not depend on the slab size.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from producer.synth.packing import (
    ATTEMPTS_PER_FIBER,
    Fiber,
    axis_distance,
    check_packed,
    mark,
    place_mixed,
)
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.store import ObjectInfo, open_store, split_uri

STORAGE_CHUNK = 64  # 64^3 uint16 = 512 KiB per object before compression
SLAB = 64  # z planes rendered at once
MAX_SIDE = 2048


@dataclass(frozen=True)
class PhantomSpec:
    shape: tuple[int, int, int] = (256, 256, 256)  # (z, y, x)
    fibers: int | None = None  # None: as many as reach volume_fraction
    volume_fraction: float = 0.35
    radius: tuple[float, float] = (4.0, 7.0)  # voxels; glass fibers of 8-14 um at 1 um voxels
    tilt_deg: float = 3.0  # of the common fiber direction from the z axis
    misalignment_deg: float = 1.5  # of each fiber from the common direction, at most
    gap: float = 1.0  # surface to surface, voxels; may be <= 0 (touching) with contact
    matrix: float = 10_000.0  # polymer
    fiber: float = 26_000.0  # glass
    noise: float = 2_000.0  # contrast-to-noise 8
    psf: float = 0.7  # Gaussian point-spread sigma, voxels
    cupping: float = 0.04
    voxel_size_um: float = 1.0
    seed: int = 0
    contact: float = 0.0  # share of fibers placed touching an earlier one (packing.py)
    crossing_deg: float = 30.0  # angle of the second population's direction to the first's
    crossing_share: float = 0.0  # share of fibers along that second direction

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or not all(8 <= n <= MAX_SIDE for n in self.shape):
            raise InvalidInput(f"phantom shape must be 3 sides of 8..{MAX_SIDE}: {self.shape}")
        if self.fibers is not None and not 0 <= self.fibers <= 1_000_000:
            raise InvalidInput(f"fibers must be 0..1000000, got {self.fibers}")
        if not 0 < self.volume_fraction <= 0.6:
            raise InvalidInput(
                "volume_fraction must be in (0, 0.6]: denser is beyond random packing"
            )
        low, high = self.radius
        if not 0.5 <= low <= high <= min(self.shape) / 4:
            raise InvalidInput(f"radius range {self.radius} does not fit shape {self.shape}")
        angles = (self.tilt_deg, self.misalignment_deg)
        if not all(0 <= a <= 30 for a in angles) or min(self.noise, self.psf) < 0:
            raise InvalidInput("tilt and misalignment must be 0..30 degrees; noise, psf >= 0")
        if not (self.gap >= 0 or (self.contact > 0 and self.gap > -low)):
            raise InvalidInput(f"gap must be >= 0, or > -{low} (pressed in) with contact")
        if not (0 <= self.contact <= 1 and 0 <= self.crossing_share < 1):
            raise InvalidInput("contact must be in [0, 1] and crossing_share in [0, 1)")
        if not self.tilt_deg <= self.crossing_deg <= self.tilt_deg + 30:
            raise InvalidInput("crossing_deg must be tilt_deg..tilt_deg + 30 (from the z axis)")
        if self.seed < 0:
            raise InvalidInput(f"seed must be non-negative, got {self.seed}")


@dataclass
class Phantom:
    spec: PhantomSpec
    fibers: list[Fiber]
    volume: npt.NDArray[np.uint16] | None = None  # None when written slab by slab
    truth: npt.NDArray[np.uint8] | None = None
    truth_voxels: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def volume_fraction(self) -> float:
        return self.truth_voxels / math.prod(self.spec.shape)


def place_fibers(spec: PhantomSpec) -> list[Fiber]:
    """Random sequential addition of non-overlapping, slightly tilted fibers.

    Candidate centres are drawn only where the mid plane still has room for the new fiber (a
    distance transform of what is placed), so packing stays fast up to near jamming; each
    candidate is then checked exactly against every placed fiber over the whole z range.
    With ``contact`` or ``crossing_share``: ``packing.place_mixed``.
    """
    if spec.contact > 0 or spec.crossing_share > 0:
        return place_mixed(spec)
    rng = np.random.default_rng([spec.seed, 1])
    nz, ny, nx = spec.shape
    half = nz / 2
    pad = math.ceil(spec.radius[1]) + 1  # centres may lie outside: fibers cut by the sides
    yy, xx = np.mgrid[-pad : ny + pad, -pad : nx + pad].astype(np.float64)
    occupied = np.zeros(yy.shape, dtype=bool)
    inner = (slice(pad, pad + ny), slice(pad, pad + nx))
    # Real laminates are well aligned: one common tilt, small individual misalignment.
    azimuth = float(rng.uniform(0.0, 2 * math.pi))
    mean_slope = np.array([math.sin(azimuth), math.cos(azimuth)]) * math.tan(
        math.radians(spec.tilt_deg)
    )
    cos_tilt = math.cos(math.radians(spec.tilt_deg + spec.misalignment_deg))
    centers, slopes, radii = np.empty((0, 2)), np.empty((0, 2)), np.empty(0)
    placed: list[Fiber] = []
    room = np.full(yy.shape, np.inf)  # distance to the nearest fiber surface, mid plane
    free: npt.NDArray[np.intp] | None = None  # where a fiber of the smallest radius fits
    misses, fraction = 0, 0.0
    while misses < ATTEMPTS_PER_FIBER:
        if spec.fibers is not None and len(placed) >= spec.fibers:
            break
        if spec.fibers is None and fraction >= spec.volume_fraction:
            break
        radius = float(rng.uniform(*spec.radius))
        # Room at the mid plane is necessary, not sufficient (tilted neighbours close in
        # elsewhere); the exact check below decides.
        if free is None:
            free = np.flatnonzero(room.ravel() >= spec.radius[0] + spec.gap)
        if free.size == 0:
            break
        pick = free[rng.integers(free.size)]
        if room.flat[pick] < radius + spec.gap:
            misses += 1
            continue
        center = np.array([yy.flat[pick], xx.flat[pick]]) + rng.uniform(-0.5, 0.5, 2)
        # Within a disc of misalignment around the common direction (uniform in solid angle
        # for these small angles).
        spread = math.tan(math.radians(spec.misalignment_deg)) * math.sqrt(rng.uniform())
        phi = float(rng.uniform(0.0, 2 * math.pi))
        slope = mean_slope + spread * np.array([math.sin(phi), math.cos(phi)])
        if len(placed):
            # Closest approach of the two axes' traces over z in [-half, half]: |dc + ds z| is
            # smallest at z = -dc.ds / |ds|^2, clipped to the volume.
            dc, ds = center - centers, slope - slopes
            norm2 = np.einsum("ij,ij->i", ds, ds)
            dot = np.einsum("ij,ij->i", dc, ds)
            z = np.clip(
                np.divide(-dot, norm2, out=np.zeros_like(dot), where=norm2 > 0), -half, half
            )
            closest = np.linalg.norm(dc + ds * z[:, None], axis=1) * cos_tilt
            if np.any(closest < radius + radii + spec.gap):
                misses += 1
                continue
        fiber = Fiber(
            (float(center[0]), float(center[1])), (float(slope[0]), float(slope[1])), radius
        )
        placed.append(fiber)
        centers, slopes = np.vstack([centers, center]), np.vstack([slopes, slope])
        radii = np.append(radii, radius)
        mark(fiber, radius + spec.radius[1] + spec.gap + 2, pad, (yy, xx), occupied, room)
        fraction = float(occupied[inner].mean())
        free = None
        misses = 0
    check_packed(spec, len(placed), fraction, "the gap or the tilt")
    return placed


def render_slab(
    spec: PhantomSpec, fibers: list[Fiber], z0: int, z1: int
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint8]]:
    """Planes ``z0:z1`` of the volume and of its ground truth."""
    nz, ny, nx = spec.shape
    margin = math.ceil(4 * spec.psf)  # the blur reads this far beyond the slab
    zs = np.arange(z0 - margin, z1 + margin, dtype=np.float64) - (nz - 1) / 2
    cover = np.zeros((zs.size, ny, nx), dtype=np.float32)
    truth = np.zeros((z1 - z0, ny, nx), dtype=np.uint8)
    for fiber in fibers:
        cy = fiber.center[0] + fiber.slope[0] * zs
        cx = fiber.center[1] + fiber.slope[1] * zs
        pad = fiber.radius + 2
        y0, y1 = max(0, math.floor(cy.min() - pad)), min(ny, math.ceil(cy.max() + pad) + 1)
        x0, x1 = max(0, math.floor(cx.min() - pad)), min(nx, math.ceil(cx.max() + pad) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dist = axis_distance(
            fiber,
            zs[:, None, None],
            np.arange(y0, y1, dtype=np.float64)[None, :, None],
            np.arange(x0, x1, dtype=np.float64)[None, None, :],
        )
        # Partial volume: a linear ramp one voxel wide, half covered at the surface.
        part = np.clip(fiber.radius - dist + 0.5, 0.0, 1.0).astype(np.float32)
        box = cover[:, y0:y1, x0:x1]
        np.maximum(box, part, out=box)
        truth[:, y0:y1, x0:x1] |= (dist[margin : margin + z1 - z0] <= fiber.radius).astype(np.uint8)
    image = spec.matrix + (spec.fiber - spec.matrix) * cover
    if spec.psf > 0:
        image = ndimage.gaussian_filter(image, spec.psf, mode="nearest")
    image = image[margin : margin + z1 - z0]
    if spec.cupping:
        yy, xx = np.mgrid[0:ny, 0:nx]
        r2 = ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) / (max(ny, nx) / 2) ** 2
        image *= (1.0 - spec.cupping * (1.0 - np.minimum(r2, 1.0))).astype(np.float32)
    for i, z in enumerate(range(z0, z1)):
        image[i] += np.random.default_rng([spec.seed, 2, z]).normal(0.0, spec.noise, (ny, nx))
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16), truth


def stress_spec(
    shape: tuple[int, int, int], seed: int = 0, noise_share: float = 0.25, radius: float = 4.0
) -> PhantomSpec:
    """Issue #19's stress phantom: volume fraction 0.30, one radius, noise SD ``noise_share`` of
    the fiber-matrix contrast, no blur, half the fibers touching a neighbour (surfaces in
    contact) and a quarter crossing the rest at 30 degrees."""
    matrix, fiber = 10_000.0, 26_000.0
    return PhantomSpec(
        shape=shape,
        volume_fraction=0.30,
        radius=(radius, radius),
        gap=0.0,
        matrix=matrix,
        fiber=fiber,
        noise=noise_share * (fiber - matrix),
        psf=0.0,
        contact=0.5,
        crossing_deg=30.0,
        crossing_share=0.25,
        seed=seed,
    )


def make_phantom(spec: PhantomSpec) -> Phantom:
    """The whole phantom in memory (tests, benchmarks)."""
    fibers = place_fibers(spec)
    volume, truth = render_slab(spec, fibers, 0, spec.shape[0])
    phantom = Phantom(spec, fibers, volume, truth, int(truth.sum()))
    phantom.info = describe(phantom)
    return phantom


def describe(phantom: Phantom) -> dict[str, Any]:
    spec = phantom.spec
    return {
        "generator": "voxfleet synth fibers",
        "spec": {k: v for k, v in asdict(spec).items()},
        "fibers": len(phantom.fibers),
        "volume_fraction": round(phantom.volume_fraction, 6),
        "truth_voxels": phantom.truth_voxels,
    }


TRUTH_FOLDER = "_truth"  # no zarr.json at its top: listing the parent skips it


def truth_uri(uri: str) -> str:
    """Where the ground truth of the phantom at ``uri`` lives: ``_truth/`` beside it."""
    parent, name = split_uri(uri)
    return f"{parent}/{TRUTH_FOLDER}/{name}"


def write_phantom(
    uri: str,
    spec: PhantomSpec,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> Phantom:
    """Write the volume at ``uri`` and its ground truth beside it; returns the description.

    Arrays are written with zarr to a local folder (or straight to a local ``uri``), then
    uploaded object by object when ``uri`` is on S3.
    """
    import zarr

    fibers = place_fibers(spec)
    phantom = Phantom(spec, fibers)
    targets = {"volume": uri, "truth": truth_uri(uri)}
    with tempfile.TemporaryDirectory(prefix="voxfleet-fibers-") as scratch:
        local = {
            role: Path(target) if "://" not in target else Path(scratch) / role
            for role, target in targets.items()
        }
        chunks = tuple(min(STORAGE_CHUNK, n) for n in spec.shape)
        attrs: dict[str, Any] = {"voxel_size": [spec.voxel_size_um] * 3, "unit": "micrometer"}
        arrays = {
            role: zarr.create_array(
                zarr.storage.LocalStore(local[role]),
                shape=spec.shape,
                chunks=chunks,
                dtype=dtype,
                dimension_names=("z", "y", "x"),
                attributes=attrs,
                fill_value=0,
                overwrite=True,
            )
            for role, dtype in (("volume", "uint16"), ("truth", "uint8"))
        }
        for z0 in range(0, spec.shape[0], SLAB):
            z1 = min(spec.shape[0], z0 + SLAB)
            volume, truth = render_slab(spec, fibers, z0, z1)
            arrays["volume"][z0:z1] = volume
            arrays["truth"][z0:z1] = truth
            phantom.truth_voxels += int(truth.sum())
            if progress is not None:
                progress(z1 - z0)
        phantom.info = describe(phantom)
        phantom.info["truth_uri"] = targets["truth"]
        for role in ("volume", "truth"):
            arrays[role].attrs.update({"voxfleet_phantom": phantom.info})
        for role, target in targets.items():
            if "://" in target:
                _upload(local[role], target, settings)
    return phantom


def _upload(folder: Path, uri: str, settings: Settings) -> list[ObjectInfo]:
    store = open_store(uri, settings)
    return [
        store.put_file(path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
