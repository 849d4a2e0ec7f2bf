"""Connected components of the thresholded objectness across blocks, holding one block a task.

dask-image's ``label`` keeps every block's labels in the cluster's memory until its global
relabelling (4 B a voxel: 4 GiB at 1024^3, twice the memory of two 2 GiB workers). Here each
block is labelled twice, from the objectness already written to the output:

1. ``measure``: a worker reads its block, thresholds it, labels it with scipy (6-connected,
   as ``scipy.ndimage.label``'s default), and returns the block's moments and the labels on
   its six faces. ``face_pairs`` runs on the workers too: the labels that touch across each
   face two neighbouring blocks share.
2. ``join`` (the consumer): one graph whose nodes are the blocks' labels and whose edges are
   those pairs; its connected components are the volume's, and each block gets a lookup
   from its own labels to them, then (``relabel.lookup``) to the fibers.
3. ``write_fibers``: a worker labels its block again (the same scipy call on the same voxels
   gives the same labels), looks them up and writes the fibers' label image.

Specks: a component under ``min_fiber_voxels`` that touches none of the faces its block shares
with a neighbour cannot join any other block's, so it can never be a fiber. The block counts
it (number, voxels, size bins) and numbers it 0; its moments never reach the consumer. On a
noisy volume these are almost all the components (tens of thousands at 128^3), so the consumer
gathers the fibers' moments and the few specks at block borders, not one row per speck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from consumers.pipelines.microstructure import fiberstats, ngff
from consumers.pipelines.microstructure.fiberstats import Specks
from shared.store import ObjectInfo

Corner = tuple[int, int, int]
Shape = tuple[int, int, int]


@dataclass
class Block:
    """What ``measure`` leaves on the worker: ``faces[axis]`` = (first plane, last plane)."""

    count: int
    moments: NDArray[np.float64]
    specks: Specks
    faces: list[tuple[NDArray[np.uint32], NDArray[np.uint32]]]


def block_regions(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[Corner, Shape]]:
    """(corner, shape) of every block of a dask chunking, in C order."""
    starts = [np.cumsum((0, *axis[:-1])) for axis in chunks]
    regions: list[tuple[Corner, Shape]] = []
    for i, j, k in np.ndindex(*(len(axis) for axis in chunks)):
        corner = (int(starts[0][i]), int(starts[1][j]), int(starts[2][k]))
        regions.append((corner, (chunks[0][i], chunks[1][j], chunks[2][k])))
    return regions


def _faces(labels: NDArray[np.uint32]) -> list[tuple[NDArray[np.uint32], NDArray[np.uint32]]]:
    return [
        (np.take(labels, 0, axis=a).copy(), np.take(labels, -1, axis=a).copy()) for a in range(3)
    ]


def _shared_faces(corner: Corner, shape: Shape, volume: Shape) -> list[tuple[bool, bool]]:
    """Per axis: whether the block's first and last planes face a neighbouring block."""
    return [(c > 0, c + n < size) for c, n, size in zip(corner, shape, volume, strict=True)]


def label_block(
    values: NDArray[Any],
    threshold: float,
    min_fiber_voxels: int,
    shared: list[tuple[bool, bool]] | None = None,
) -> tuple[NDArray[np.uint32], int, Specks]:
    """The block's components above ``threshold`` numbered 1..count in scipy's order, with the
    specks that touch no face it ``shared`` with a neighbour (default: every face) numbered
    0 (and described in ``Specks``)."""
    labels, n = ndimage.label(values > threshold)
    if n == 0:
        return labels.astype(np.uint32), 0, Specks()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_fiber_voxels
    for (low, high), (has_low, has_high) in zip(
        _faces(labels), shared or [(True, True)] * 3, strict=True
    ):
        keep[low] |= has_low
        keep[high] |= has_high
    keep[0] = False
    compact = np.zeros(n + 1, np.uint32)
    compact[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    dropped = sizes[1:][~keep[1:]]
    out: NDArray[np.uint32] = compact[labels]
    return out, int(keep.sum()), Specks.of(dropped)


def _read(source: zarr.Array[Any], corner: Corner, shape: Shape) -> NDArray[Any]:
    region = tuple(slice(c, c + n) for c, n in zip(corner, shape, strict=True))
    return np.asarray(source[region])


def measure(
    source: zarr.Array[Any],
    corner: Corner,
    shape: Shape,
    threshold: float,
    min_fiber_voxels: int,
) -> Block:
    """Runs on a worker: pass one over one block of the stored objectness."""
    volume_shape: Shape = tuple(int(n) for n in source.shape)  # type: ignore[assignment]
    shared = _shared_faces(corner, shape, volume_shape)
    values = _read(source, corner, shape)
    labels, count, specks = label_block(values, threshold, min_fiber_voxels, shared)
    moments = fiberstats.block_moments(labels, corner, volume_shape)
    return Block(count, moments, specks, _faces(labels))


def summary(block: Block) -> tuple[int, NDArray[np.float64], Specks]:
    """What the consumer gathers of a block (its faces stay on the workers)."""
    return block.count, block.moments, block.specks


def face_pairs(low_block: Block, high_block: Block, axis: int) -> NDArray[np.uint32]:
    """Runs on a worker: the (label in ``low_block``, label in ``high_block``) pairs that touch
    across their common face along ``axis`` (``high_block`` follows ``low_block`` there)."""
    a, b = low_block.faces[axis][1].ravel(), high_block.faces[axis][0].ravel()
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.empty((0, 2), np.uint32)
    pairs: NDArray[np.uint32] = np.unique(np.column_stack([a[both], b[both]]), axis=0)
    return pairs


def neighbours(grid: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(block, next block, axis) for every face two blocks of a C-ordered grid share."""
    index = np.arange(math.prod(grid)).reshape(grid)
    found = []
    for axis in range(3):
        low = np.take(index, np.arange(grid[axis] - 1), axis=axis).ravel()
        high = np.take(index, np.arange(1, grid[axis]), axis=axis).ravel()
        found += [(int(i), int(j), axis) for i, j in zip(low, high, strict=True)]
    return found


@dataclass
class Joined:
    """The volume's components: ``moments`` (row = component, row 0 the background), the
    specks dropped in the blocks, and per block the component of each of its labels."""

    moments: NDArray[np.float64]
    specks: Specks
    components: list[NDArray[np.intp]]

    @property
    def count(self) -> int:
        """Components in the volume, specks included (what ``scipy.ndimage.label`` counts)."""
        return int(self.moments.shape[0]) - 1 + self.specks.count

    def lookups(self, table: NDArray[np.uint32]) -> list[NDArray[np.uint32]]:
        """Per block: its label -> fiber (``table``: component -> fiber, 0 for none)."""
        return [table[ids] for ids in self.components]


def join(
    summaries: list[tuple[int, NDArray[np.float64], Specks]],
    pairs: list[tuple[int, int, NDArray[np.uint32]]],
) -> Joined:
    """The consumer's step: blocks' labels that touch across faces are one component."""
    counts = np.array([count for count, _, _ in summaries], dtype=np.intp)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nodes = int(counts.sum()) + 1  # node 0: the background, alone
    edges = [
        (pair[:, 0].astype(np.intp) + offsets[i], pair[:, 1].astype(np.intp) + offsets[j])
        for i, j, pair in pairs
        if pair.size
    ]
    rows = np.concatenate([e[0] for e in edges]) if edges else np.empty(0, np.intp)
    cols = np.concatenate([e[1] for e in edges]) if edges else np.empty(0, np.intp)
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(nodes, nodes))
    _, found = connected_components(graph, directed=False)
    # The background keeps 0; the components are 1..K (in any order: relabel orders fibers).
    _, inverse = np.unique(found[1:], return_inverse=True)
    component = np.concatenate([[0], inverse + 1]).astype(np.intp)
    per_block = [
        np.concatenate([[0], component[offsets[i] + 1 : offsets[i] + counts[i] + 1]])
        for i in range(len(summaries))
    ]
    rows_global = []
    for (_, moments, _), ids in zip(summaries, per_block, strict=True):
        if moments.size:
            mapped = moments.copy()
            mapped[:, 0] = ids[moments[:, 0].astype(np.intp)]
            rows_global.append(mapped)
    n_components = int(component.max()) if component.size else 0
    specks = Specks()
    for _, _, part in summaries:
        specks = specks.add(part)
    return Joined(fiberstats.merge_moments(rows_global, n_components), specks, per_block)


def write_fibers(
    source: zarr.Array[Any],
    target: zarr.Array[Any],
    corner: Corner,
    shape: Shape,
    threshold: float,
    min_fiber_voxels: int,
    lookup: NDArray[np.uint32],
) -> list[ObjectInfo]:
    """Runs on a worker: pass two, the fibers of one block written to the label image."""
    shared = _shared_faces(corner, shape, tuple(int(n) for n in source.shape))  # type: ignore[arg-type]
    labels, _, _ = label_block(_read(source, corner, shape), threshold, min_fiber_voxels, shared)
    return ngff.write_region(lookup[labels], target, corner)
