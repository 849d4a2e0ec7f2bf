"""Packing of the stress phantoms (``PhantomSpec.contact`` or ``crossing_share`` set): fibers
that touch, and a second population crossing the first.

- Contact: a share ``contact`` of the candidates is placed beside a random earlier fiber of its
  population, parallel to it, its surface ``gap`` voxels from that fiber's (0: surfaces in
  contact, negative: pressed into each other); the rest are drawn at random as in
  ``fibers.place_fibers``, so clusters of touching fibers are spread over the whole section.
- Crossing: each fiber is of the second population with a probability set so that a share
  ``crossing_share`` of the fibers in any z plane is; that population's common direction makes
  ``crossing_deg`` with the first one (in the plane of the first one's tilt). Fibers of one
  population never come closer than ``gap``; fibers of different populations may pass through
  each other (the truth is their union): junctions, the hardest case for a tube filter.

The default phantom never comes here (``fibers.place_fibers`` keeps its own draws), so it is
unchanged byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput

if TYPE_CHECKING:
    from producer.synth.fibers import PhantomSpec


ATTEMPTS_PER_FIBER = 2000  # consecutive misses before random sequential addition gives up


@dataclass(frozen=True)
class Fiber:
    center: tuple[float, float]  # (y, x) where the axis crosses the mid plane
    slope: tuple[float, float]  # (dy/dz, dx/dz)
    radius: float


def axis_distance(
    fiber: Fiber, z: npt.NDArray[np.float64], y: npt.NDArray[np.float64], x: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Distance from points (z relative to the mid plane) to the fiber's axis (broadcasting)."""
    direction = np.array([1.0, *fiber.slope])
    direction /= np.linalg.norm(direction)
    dy = y - (fiber.center[0] + fiber.slope[0] * z)
    dx = x - (fiber.center[1] + fiber.slope[1] * z)
    along = dy * direction[1] + dx * direction[2]  # the offset vector is (0, dy, dx)
    distance: npt.NDArray[np.float64] = np.sqrt(np.maximum(dy * dy + dx * dx - along * along, 0))
    return distance


def mark(
    fiber: Fiber,
    reach: float,
    pad: int,
    grid: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    occupied: npt.NDArray[np.bool_],
    room: npt.NDArray[np.float64],
) -> None:
    """Mark a placed fiber in the mid-plane maps: ``occupied`` (inside a fiber) and ``room``
    (distance to the nearest surface), in a box of ``reach`` around it (room only matters up
    to the largest radius + gap)."""
    (r0, r1), (c0, c1) = (
        (max(0, math.floor(c + pad - reach)), max(0, math.ceil(c + pad + reach) + 1))
        for c in fiber.center
    )
    box = (slice(r0, r1), slice(c0, c1))
    surface = axis_distance(fiber, np.zeros(1), grid[0][box], grid[1][box]) - fiber.radius
    occupied[box] |= surface <= 0
    np.minimum(room[box], surface, out=room[box])


def check_packed(spec: PhantomSpec, count: int, fraction: float, knobs: str) -> None:
    """Refuse a packing that fell short of what ``spec`` asked for."""
    if spec.fibers is not None and count < spec.fibers:
        raise InvalidInput(f"only {count} of {spec.fibers} fibers fit; use fewer or a bigger shape")
    if spec.fibers is None and fraction < spec.volume_fraction - 0.01:
        raise InvalidInput(
            f"random packing stopped at volume fraction {fraction:.3f} < {spec.volume_fraction}; "
            f"lower it, {knobs}"
        )


def _directions(spec: PhantomSpec, azimuth: float) -> list[npt.NDArray[np.float64]]:
    """The mean slope (dy/dz, dx/dz) of each population."""
    tilt = math.radians(spec.tilt_deg)
    slopes = [np.array([math.sin(azimuth), math.cos(azimuth)]) * math.tan(tilt)]
    if spec.crossing_share > 0:
        # In the plane of the first tilt, on the other side of z when the angle allows.
        second = math.radians(spec.crossing_deg) - tilt
        slopes.append(np.array([math.sin(azimuth), math.cos(azimuth)]) * -math.tan(second))
    return slopes


def _reach(
    slope: npt.NDArray[np.float64],
    yy: npt.NDArray[np.float64],
    xx: npt.NDArray[np.float64],
    bounds: tuple[tuple[float, float], tuple[float, float]],
    half: float,
) -> npt.NDArray[np.bool_]:
    """Mid-plane points whose line of slope ``slope`` enters ``bounds`` for some |z| <= half
    (the box swept along the direction: uniform density there is uniform in every plane)."""
    lo, hi = np.full(yy.shape, -half), np.full(yy.shape, half)
    for grid, s, (b0, b1) in zip((yy, xx), slope, bounds, strict=True):
        if abs(s) < 1e-12:
            inside = (grid >= b0) & (grid <= b1)
            lo, hi = np.where(inside, lo, np.inf), np.where(inside, hi, -np.inf)
            continue
        z0, z1 = (b0 - grid) / s, (b1 - grid) / s
        lo, hi = np.maximum(lo, np.minimum(z0, z1)), np.minimum(hi, np.maximum(z0, z1))
    reached: npt.NDArray[np.bool_] = lo <= hi
    return reached


def _distance(
    center: npt.NDArray[np.float64],
    slope: npt.NDArray[np.float64],
    centers: npt.NDArray[np.float64],
    slopes: npt.NDArray[np.float64],
    half: float,
) -> npt.NDArray[np.float64]:
    """Closest approach of one axis to each of others over |z| <= half: at the z where their
    traces in z planes come closest, the offset's part across the new axis (exact for parallel
    axes, second order in the small angle between them otherwise)."""
    dc, ds = center - centers, slope - slopes
    norm2 = np.einsum("ij,ij->i", ds, ds)
    dot = np.einsum("ij,ij->i", dc, ds)
    z = np.clip(np.divide(-dot, norm2, out=np.zeros_like(dot), where=norm2 > 0), -half, half)
    offset = dc + ds * z[:, None]  # (dy, dx) in that z plane
    direction = np.array([1.0, *slope]) / math.sqrt(1.0 + float(slope @ slope))
    along = offset @ direction[1:]
    result: npt.NDArray[np.float64] = np.sqrt(
        np.maximum(np.einsum("ij,ij->i", offset, offset) - along * along, 0)
    )
    return result


def place_mixed(spec: PhantomSpec) -> list[Fiber]:
    """Random sequential addition with contact and a crossing population (module docstring)."""
    rng = np.random.default_rng([spec.seed, 3])
    nz, ny, nx = spec.shape
    half = nz / 2
    azimuth = float(rng.uniform(0.0, 2 * math.pi))
    means = _directions(spec, azimuth)
    spread_max = math.tan(math.radians(spec.misalignment_deg))
    pad0 = math.ceil(spec.radius[1]) + 1  # centres may lie outside: fibers cut by the sides
    drift = max(float(np.abs(m).max()) + spread_max for m in means) * half
    pad = pad0 + math.ceil(drift)
    yy, xx = np.mgrid[-pad : ny + pad, -pad : nx + pad].astype(np.float64)
    inner = (slice(pad, pad + ny), slice(pad, pad + nx))
    bounds = ((-pad0, ny + pad0 - 1.0), (-pad0, nx + pad0 - 1.0))
    regions = [_reach(m, yy, xx, bounds, half) for m in means]
    # A fiber of population p lands in the volume's planes in proportion to its region's area.
    shares = [1.0 - spec.crossing_share, spec.crossing_share][: len(means)]
    weights = np.array([s * r.sum() for s, r in zip(shares, regions, strict=True)])
    second = float(weights[-1] / weights.sum()) if len(means) > 1 else 0.0
    occupied = np.zeros(yy.shape, dtype=bool)
    rooms = [np.where(r, np.inf, -np.inf) for r in regions]  # to the nearest surface, mid plane
    frees: list[npt.NDArray[np.intp] | None] = [None] * len(means)
    placed: list[list[Fiber]] = [[] for _ in means]
    arrays = [(np.empty((0, 2)), np.empty((0, 2)), np.empty(0)) for _ in means]
    misses, fraction = 0, 0.0
    while misses < ATTEMPTS_PER_FIBER:
        if spec.fibers is not None and sum(map(len, placed)) >= spec.fibers:
            break
        if spec.fibers is None and fraction >= spec.volume_fraction:
            break
        p = int(rng.uniform() < second)
        radius = float(rng.uniform(*spec.radius))
        centers, slopes, radii = arrays[p]
        if placed[p] and rng.uniform() < spec.contact:
            # Beside a random earlier fiber, parallel to it, surfaces ``gap`` apart.
            j = int(rng.integers(len(placed[p])))
            slope = slopes[j].copy()
            phi = float(rng.uniform(0.0, 2 * math.pi))
            across = np.array([math.sin(phi), math.cos(phi)])
            direction = np.array([1.0, *slope]) / math.sqrt(1.0 + float(slope @ slope))
            stretch = math.sqrt(max(1.0 - float(across @ direction[1:]) ** 2, 1e-9))
            center = centers[j] + across * (radius + radii[j] + spec.gap) / stretch
            cell = (round(float(center[0])) + pad, round(float(center[1])) + pad)
            if (
                not (0 <= cell[0] < yy.shape[0] and 0 <= cell[1] < yy.shape[1])
                or not regions[p][cell]
            ):
                misses += 1
                continue
        else:
            if frees[p] is None:
                frees[p] = np.flatnonzero(rooms[p].ravel() >= spec.radius[0] + spec.gap)
            free = frees[p]
            assert free is not None
            if free.size == 0:
                misses += 1
                continue
            pick = free[rng.integers(free.size)]
            if rooms[p].flat[pick] < radius + spec.gap:
                misses += 1
                continue
            center = np.array([yy.flat[pick], xx.flat[pick]]) + rng.uniform(-0.5, 0.5, 2)
            spread = spread_max * math.sqrt(rng.uniform())
            phi = float(rng.uniform(0.0, 2 * math.pi))
            slope = means[p] + spread * np.array([math.sin(phi), math.cos(phi)])
        if len(radii):
            closest = _distance(center, slope, centers, slopes, half)
            if np.any(closest < radius + radii + spec.gap - 1e-6):
                misses += 1
                continue
        fiber = Fiber(
            (float(center[0]), float(center[1])), (float(slope[0]), float(slope[1])), radius
        )
        placed[p].append(fiber)
        arrays[p] = (
            np.vstack([centers, center]),
            np.vstack([slopes, slope]),
            np.append(radii, radius),
        )
        mark(fiber, radius + spec.radius[1] + abs(spec.gap) + 2, pad, (yy, xx), occupied, rooms[p])
        fraction = float(occupied[inner].mean())
        frees[p] = None
        misses = 0
    fibers = [f for population in placed for f in population]
    check_packed(spec, len(fibers), fraction, "the gap or the contact share")
    return fibers
