"""Choosing the compute chunks of a filter with a halo: as few extra voxels as possible, as many
chunks as the workers can use, none bigger than a worker can hold.

A chunk is computed with ``halo`` voxels of context on each side that has a neighbour
(``boundary="none"``: at the volume's faces ITK sees the true border, as in a whole-volume call);
those voxels are computed twice. Along an axis of ``n`` voxels cut into ``k`` chunks the work is
``n + 2 * halo * (k - 1)``, and the axes multiply. The microstructure reference (see
docs/architecture.md) cut 100x128x128 chunks with a 32-voxel halo on every face: 3.7x the
useful work. Here a plan may cost at most ``MAX_HALO_OVERHEAD`` extra when any plan that fits
in memory does; among those the one that finishes first on
``n_workers`` wins (equal chunks, so a round of tasks per worker).

Compute chunks are whole multiples of the output's storage chunk along every axis, so each
storage chunk of the output lies inside exactly one compute chunk: one task writes it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

Boundary = Literal["none", "reflect"]

STORAGE_CHUNK = 64  # output chunk side: 1 MiB of float32, a comfortable object size for S3
MAX_HALO_OVERHEAD = 0.10  # extra voxels computed because of halos, as a fraction of the volume
# One task's peak: the Hessian's six float32 components (24 B per voxel), the partial passes,
# the trace screen and the gathered double tensor of the voxels it keeps, plus the float32
# input, the overlapped copy dask assembles and the output; measured ~48 B/voxel of the task
# (ITK's own Hessian filter, 6 doubles per voxel: ~56).
TASK_BYTES_PER_VOXEL = 72
TASK_MEMORY_FRACTION = 0.5  # of a worker's memory limit; dask starts spilling at 60%
DEFAULT_WORKER_MEMORY = 4 * 1024**3  # when the cluster reports no limit


@dataclass(frozen=True)
class ChunkPlan:
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]  # compute chunk; the last along an axis may be shorter
    halo: int
    storage: tuple[int, int, int]  # output storage chunk; divides ``chunks``
    boundary: Boundary = "none"
    requested: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(len(self.sizes(axis)) for axis in range(3))

    @property
    def n_chunks(self) -> int:
        return math.prod(self.grid)

    def sizes(self, axis: int) -> tuple[int, ...]:
        """Chunk lengths along ``axis``. A remainder shorter than the halo joins its neighbour:
        dask would otherwise rechunk (and break the alignment with the storage chunks)."""
        n, c = self.shape[axis], self.chunks[axis]
        sizes = [min(c, n - start) for start in range(0, n, c)]
        if len(sizes) > 1 and sizes[-1] < self.halo:
            tail = sizes.pop()
            sizes[-1] += tail
        return tuple(sizes)

    @property
    def dask_chunks(self) -> tuple[tuple[int, ...], ...]:
        return tuple(self.sizes(axis) for axis in range(3))

    def _extents(self, axis: int) -> list[int]:
        sizes = self.sizes(axis)
        if self.boundary == "reflect":
            return [s + 2 * self.halo for s in sizes]
        return [
            s + (self.halo if i > 0 else 0) + (self.halo if i < len(sizes) - 1 else 0)
            for i, s in enumerate(sizes)
        ]

    @property
    def computed_voxels(self) -> int:
        """Voxels the filter runs over, halos included."""
        return math.prod(sum(self._extents(axis)) for axis in range(3))

    @property
    def largest_task_voxels(self) -> int:
        return math.prod(max(self._extents(axis)) for axis in range(3))

    @property
    def overhead(self) -> float:
        return self.computed_voxels / math.prod(self.shape) - 1.0

    def makespan(self, n_workers: int) -> float:
        """Voxels one worker computes if equal chunks go round by round."""
        rounds = math.ceil(self.n_chunks / max(1, n_workers))
        return self.computed_voxels / self.n_chunks * rounds

    def as_dict(self) -> dict[str, Any]:
        return {
            "compute_chunk": list(self.chunks),
            "grid": list(self.grid),
            "chunks": self.n_chunks,
            "halo": self.halo,
            "boundary": self.boundary,
            "storage_chunk": list(self.storage),
            "halo_overhead": round(self.overhead, 6),
            "largest_task_voxels": self.largest_task_voxels,
            "requested": self.requested,
        }


def task_voxel_budget(worker_memory_bytes: int | None) -> int:
    memory = worker_memory_bytes or DEFAULT_WORKER_MEMORY
    return int(memory * TASK_MEMORY_FRACTION / TASK_BYTES_PER_VOXEL)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def plan_chunks(
    shape: tuple[int, int, int],
    halo: int,
    *,
    n_workers: int,
    max_task_voxels: int,
    requested: tuple[int, int, int] | None = None,
    boundary: Boundary = "none",
) -> ChunkPlan:
    """The compute chunking of ``shape`` (see the module docstring for the rules)."""
    if requested is not None:
        chunks = (
            min(requested[0], shape[0]),
            min(requested[1], shape[1]),
            min(requested[2], shape[2]),
        )
        storage = (
            _largest_divisor_at_most(chunks[0], STORAGE_CHUNK),
            _largest_divisor_at_most(chunks[1], STORAGE_CHUNK),
            _largest_divisor_at_most(chunks[2], STORAGE_CHUNK),
        )
        return ChunkPlan(shape, chunks, halo, storage, boundary, requested=True)
    storage = (
        min(STORAGE_CHUNK, shape[0]),
        min(STORAGE_CHUNK, shape[1]),
        min(STORAGE_CHUNK, shape[2]),
    )
    options = [
        sorted({min(n, s * m) for m in range(1, math.ceil(n / s) + 1)})
        for n, s in zip(shape, storage, strict=True)
    ]
    plans = [
        ChunkPlan(shape, (cz, cy, cx), halo, storage, boundary)
        for cz, cy, cx in itertools.product(*options)
    ]
    fits = [p for p in plans if p.largest_task_voxels <= max_task_voxels]
    if not fits:  # nothing fits: the smallest tasks there are, and the cluster copes or not
        return min(plans, key=lambda p: (p.largest_task_voxels, p.overhead))
    cheap = [p for p in fits if p.overhead <= MAX_HALO_OVERHEAD]

    def rank(p: ChunkPlan) -> tuple[float, ...]:
        # Ties prefer whole x rows, then whole y planes: contiguous reads and writes.
        return (p.makespan(n_workers), p.overhead, p.n_chunks, -p.chunks[2], -p.chunks[1])

    if cheap:
        return min(cheap, key=rank)
    return min(fits, key=lambda p: (p.overhead, *rank(p)))
