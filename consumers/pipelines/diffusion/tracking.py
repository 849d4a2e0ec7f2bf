"""Sharded whole-brain tracking: every seed in exactly one shard, each shard tracked and written
to the store by the worker that tracked it.

Seeds come from ``seeds_from_mask`` (a fixed order) and are cut into contiguous ranges, the
remainder spread over the first shards, so the shards' ranges tile ``[0, n_seeds)``. dipy's
fast trackers track each seed independently of the others, so the union of the shards, in
shard order, is what one serial ``deterministic_tracking`` call over all seeds returns.

The fODF coefficients and the FA (the stopping criterion), cut to the white matter's bounding
box (``box``: the same streamlines), go to every worker once; a shard task then takes
references to them plus its own seeds, and returns only a few numbers (and, for the QC image, a
sparse streamline-density map): streamlines never pass through the consumer.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from dipy.io.stateful_tractogram import StatefulTractogram
from dipy.io.streamline import save_tractogram
from dipy.io.utils import Space
from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
from dipy.tracking.tracker import deterministic_tracking, probabilistic_tracking
from dipy.tracking.utils import seeds_from_mask
from nibabel.streamlines.array_sequence import ArraySequence
from numpy.typing import NDArray

from consumers.pipelines.diffusion.bounds import EdgeCounts, keep_in_grid
from consumers.pipelines.diffusion.box import Box
from consumers.pipelines.fanout import TaskStats, map_scattered
from shared.params import TractographyParams
from shared.store import ObjectInfo, ObjectStore

SHARDS_PER_WORKER = 4  # enough that the last shard to finish leaves little idle time
# dipy sizes its streamline buffer for all the seeds of a call (2 * max_len / step points of
# 24 bytes each, ~24 kB per seed at the defaults); this many seeds at a time caps it (~120 MB).
SEEDS_PER_BUFFER = 5000

Density = tuple[NDArray[np.int64], NDArray[np.int64]]  # flat voxel indices, streamline counts


def seed_grid(seeds_per_voxel: int) -> tuple[int, int, int]:
    """Seeds along (x, y, z) of each voxel with ``seeds_per_voxel`` seeds in all: the most even
    factorisation (8 -> 2x2x2, 4 -> 2x2x1, 6 -> 3x2x1)."""
    if seeds_per_voxel < 1:
        raise ValueError("seeds_per_voxel must be >= 1")
    best = (seeds_per_voxel, 1, 1)
    for a in range(1, seeds_per_voxel + 1):
        for b in range(1, a + 1):
            c, rest = divmod(seeds_per_voxel, a * b)
            if rest == 0 and c <= b and (a, b, c) < best:
                best = (a, b, c)
    return best


def make_seeds(
    wm: NDArray[np.bool_], affine: NDArray[np.float64], seeds_per_voxel: int
) -> NDArray[np.float64]:
    """World (RAS mm) seed positions, voxel by voxel in ``np.argwhere`` order."""
    seeds = seeds_from_mask(wm, affine, density=seed_grid(seeds_per_voxel))
    return np.ascontiguousarray(seeds, dtype=np.float64)


def plan_shards(n_seeds: int, n_shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` seed ranges of ``n_shards`` contiguous shards covering every seed; the
    first ``n_seeds % n_shards`` get one seed more (as ``np.array_split``). No empty shard."""
    n_shards = max(1, min(n_shards, n_seeds))
    size, extra = divmod(n_seeds, n_shards)
    bounds, start = [], 0
    for i in range(n_shards):
        stop = start + size + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_key(index: int, output_format: str) -> str:
    return f"shards/sl-{index:04d}.{output_format}"


@dataclass(frozen=True)
class TrackingOptions:
    """What a shard task needs to know besides its data (small, pickled into every task)."""

    tracker: str
    step_size: float
    max_angle: float
    fa_stop: float
    min_len: int
    max_len: int
    random_seed: int
    output_format: str
    density: bool  # return a sparse streamline-density map (for the QC image)

    @classmethod
    def from_params(cls, params: TractographyParams) -> TrackingOptions:
        return cls(
            tracker=params.tracker,
            step_size=params.step_size,
            max_angle=params.max_angle,
            fa_stop=params.fa_stop,
            min_len=params.min_len,
            max_len=params.max_len,
            random_seed=params.random_seed,
            output_format=params.output_format,
            density=params.qc,
        )


def reference_header(
    affine: NDArray[np.float64], shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> Any:
    """A NIfTI header with the DWI's grid: the spatial reference of every shard, small enough to
    ship to the workers instead of the DWI."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_sform(affine, code=1)
    header.set_zooms(zooms)
    return header


def track(
    seeds: NDArray[np.float64],
    sh: NDArray[np.float64],
    fa: NDArray[np.float64],
    affine: NDArray[np.float64],
    options: TrackingOptions,
    *,
    nbr_threads: int = 1,
) -> Any:
    """Streamlines (dipy ``Streamlines``, RAS mm) from ``seeds`` over the fODF coefficients ``sh``
    (descoteaux07 basis, as dipy's CSD writes them), stopping where FA < ``options.fa_stop``."""
    stopping = ThresholdStoppingCriterion(fa, options.fa_stop)
    common: dict[str, Any] = {
        "sh": sh,
        "min_len": options.min_len,
        "max_len": options.max_len,
        "step_size": options.step_size,
        "max_angle": options.max_angle,
        "nbr_threads": nbr_threads,
        "seed_buffer_fraction": min(1.0, SEEDS_PER_BUFFER / max(1, len(seeds))),
    }
    if options.tracker == "probabilistic":
        generator = probabilistic_tracking(
            seeds, stopping, affine, random_seed=options.random_seed, **common
        )
    else:
        generator = deterministic_tracking(seeds, stopping, affine, **common)
    return ArraySequence(generator)


def density_sparse(
    streamlines: Any, affine: NDArray[np.float64], shape: tuple[int, ...]
) -> Density:
    """How many streamlines pass through each voxel (each counted once per voxel), as the
    visited voxels' flat indices and counts: a fraction of the dense volume's size."""
    points = np.asarray(streamlines.get_data(), dtype=np.float64)
    if points.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    inverse = np.linalg.inv(affine)
    ijk = np.rint(points @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
    # Points may sit up to half a voxel outside the outer centres; they belong to the edge voxel.
    np.clip(ijk, 0, np.asarray(shape[:3]) - 1, out=ijk)
    flat = np.ravel_multi_index(tuple(ijk.T), shape[:3])
    owner = np.repeat(np.arange(len(streamlines), dtype=np.int64), streamlines._lengths)
    n_voxels = int(np.prod(shape[:3]))
    visits = np.unique(owner * n_voxels + flat) % n_voxels
    voxels, counts = np.unique(visits, return_counts=True)
    return voxels.astype(np.int64), counts.astype(np.int64)


@dataclass(frozen=True)
class ShardSeeds:
    """One shard's share of the seeds: what is scattered to the workers, once per shard."""

    index: int
    start: int  # position of seeds[0] in the whole seed list
    seeds: NDArray[np.float64]


def track_shard(
    part: ShardSeeds,
    sh: NDArray[np.float64],
    fa: NDArray[np.float64],
    box: Box,
    affine: NDArray[np.float64],
    header: Any,
    options: TrackingOptions,
    out: ObjectStore,
) -> dict[str, Any]:
    """Runs on a worker: track one shard over ``box`` of the grid (``affine`` is the grid's),
    save it, put it in the store; return its numbers."""
    shape = box.grid_shape
    tracked = track(part.seeds, sh, fa, box.affine(affine), options)
    streamlines, edges = keep_in_grid(tracked, affine, shape)
    tractogram = StatefulTractogram(streamlines, header, Space.RASMM)
    key = shard_key(part.index, options.output_format)
    with tempfile.TemporaryDirectory(prefix="voxfleet-shard-") as tmp:
        path = Path(tmp) / Path(key).name
        # keep_in_grid made this pass; the check stays so that no file is written a reader with
        # the same check (dipy's default) would refuse.
        save_tractogram(tractogram, str(path), bbox_valid_check=True)
        info = out.put_file(key, path)
    density = density_sparse(streamlines, affine, shape) if options.density else None
    return {
        "key": info.key,
        "seed_start": part.start,
        "seed_stop": part.start + len(part.seeds),
        "streamlines": len(streamlines),
        "edge": edges.as_dict(),
        "bytes": info.bytes,
        "sha256": info.sha256,
        "density": density,
    }


@dataclass
class TrackingResult:
    shards: list[dict[str, Any]]  # key, seed range, streamlines, bytes, sha256: for the manifest
    files: list[ObjectInfo]
    tasks: list[TaskStats]  # what each shard cost, and where it ran
    density: NDArray[np.int32] | None  # streamlines per voxel, if asked for

    @property
    def streamlines(self) -> int:
        return sum(int(s["streamlines"]) for s in self.shards)

    @property
    def edge(self) -> EdgeCounts:
        """Streamlines changed at the image's edge, over all shards (see ``bounds``)."""
        return sum((EdgeCounts(**s["edge"]) for s in self.shards), EdgeCounts())


def track_sharded(
    client: Any,
    seeds: NDArray[np.float64],
    sh: NDArray[np.float64],
    fa: NDArray[np.float64],
    box: Box,
    affine: NDArray[np.float64],
    header: Any,
    options: TrackingOptions,
    out: ObjectStore,
    n_shards: int,
) -> TrackingResult:
    """Track ``seeds`` in ``n_shards`` shards across the cluster, each written to ``out``. ``sh``
    is the coefficients over ``box`` of the grid (``CsdFit.volume(box)``), ``fa`` the whole
    grid's FA, ``affine`` the grid's."""
    if sh.shape[:3] != box.shape or fa.shape != box.grid_shape:
        raise ValueError("sh must cover the box and fa the whole grid")
    bounds = plan_shards(len(seeds), n_shards)
    parts = [ShardSeeds(i, a, seeds[a:b]) for i, (a, b) in enumerate(bounds)]
    labels = [
        f"shard {shard_key(i, options.output_format)} (seeds {a}..{b - 1})"
        for i, (a, b) in enumerate(bounds)
    ]
    # Each shard's seeds travel once, and again only if their worker dies: the shard is then
    # tracked again elsewhere and rewrites its own key, and the manifest lists that last write.
    # Every shard reads the whole volumes: one copy per worker, sent once (again only to
    # replace what a dead worker took with it).
    results = map_scattered(
        client,
        track_shard,
        parts,
        box,
        affine,
        header,
        options,
        out,
        labels=labels,
        shared=(sh, box.cut(fa)),
    )

    density = np.zeros(fa.shape, dtype=np.int32) if options.density else None
    for r in results:
        if density is not None and r["density"] is not None:
            voxels, counts = r["density"]
            density.ravel()[voxels] += counts.astype(np.int32)
    fields = ("key", "seed_start", "seed_stop", "streamlines", "edge", "bytes", "sha256")
    shards = [{f: r[f] for f in fields} for r in results]
    files = [ObjectInfo(r["key"], int(r["bytes"]), str(r["sha256"])) for r in results]
    return TrackingResult(shards, files, results.stats, density)
