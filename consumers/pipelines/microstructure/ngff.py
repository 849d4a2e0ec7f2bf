"""OME-Zarr (NGFF 0.5, Zarr v3) output: a multiscale image and a multiscale label image, written
chunk by chunk from the Dask workers.

The consumer creates the groups, the arrays and the metadata (ome-zarr-py's writers, so the
metadata is what its reader expects); then each task writes whole storage chunks of one region
and returns their sizes and checksums for the manifest, so no two tasks ever write one object.
Level 0 is written by the tasks that compute it; each coarser level is read back from the
stored level before it, a region a task (``downsample_region``), so no level is ever held in
the cluster's memory whole. ome-zarr-py is imported by the consumer only, when it writes the
metadata: the workers that import this module for ``write_region`` skip its ~2.5 CPU s (it
pulls in scikit-image).

Pyramid levels halve the axes whose voxels are finest: all of them for isotropic data, only y
and x while z voxels are at least twice as coarse (per-axis factors, recorded as each level's
``scale``). The image is averaged (its level-k voxel centre moves by half the footprint, so the
level also gets a ``translation``); labels are subsampled (a label value must stay a label).
Each multiscale names its method (``type``, ``metadata``), as NGFF 0.5 asks.

The label image lists a colour for every label (~150 B of zarr.json each), not for a few:
from a partial list napari-ome-zarr builds a direct colour map of the listed labels alone, and
draws every other label transparent. A list is needed at all because ome-zarr-models (1.6)
fails an image whose label image has no ``colors`` (its validator iterates None), though NGFF
0.5 only says SHOULD. Past ``MAX_COLORED_LABELS`` the list is empty: valid, and viewers pick
their own palette. Each fiber's size, length and diameter go to ``properties`` (hover text in
napari) for up to ``MAX_DESCRIBED_LABELS`` fibers; ``fibers.csv`` always has every fiber.
"""

from __future__ import annotations

import colorsys
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import ZstdCodec

from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.store import ObjectInfo

AXES = ("z", "y", "x")
MIN_LEVEL_SIDE = 32  # stop once the largest side of a level is at most this
MAX_LEVELS = 10
MAX_COLORED_LABELS = 100_000  # a colour each: 15 MB of zarr.json at most
MAX_DESCRIBED_LABELS = 1000  # properties are in fibers.csv anyway; these are for hover text
NGFF_VERSION = "0.5"
# Per downsampling: (``type``: ome-zarr-py's name for the method, the function that does it).
METHODS = {
    "mean": ("local_mean", "consumers.pipelines.microstructure.ngff.downsample_mean"),
    "nearest": ("nearest", "consumers.pipelines.microstructure.ngff.downsample_nearest"),
}


class Where(NamedTuple):
    """Where the image lies: its storage chunk, its voxel size and the unit of that."""

    storage: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    unit: str | None


@dataclass(frozen=True)
class Level:
    path: str
    shape: tuple[int, int, int]
    factors: tuple[int, int, int]  # cumulative downsampling against level 0, per axis
    step: tuple[int, int, int]  # against the previous level


def pyramid(shape: tuple[int, int, int], voxel_size: tuple[float, float, float]) -> list[Level]:
    levels = [Level("s0", shape, (1, 1, 1), (1, 1, 1))]
    while max(levels[-1].shape) > MIN_LEVEL_SIDE and len(levels) < MAX_LEVELS:
        last = levels[-1]
        size = [v * f for v, f in zip(voxel_size, last.factors, strict=True)]
        coarsest = max(size)
        # Halve the axes at least twice as fine as the coarsest; when all are within a factor
        # of two of each other (isotropic enough), halve them all.
        step = tuple(2 if s * 2 <= coarsest or max(size) < 2 * min(size) else 1 for s in size)
        step = tuple(1 if n == 1 else f for n, f in zip(last.shape, step, strict=True))
        if step == (1, 1, 1):
            break
        shape_next = tuple(math.ceil(n / f) for n, f in zip(last.shape, step, strict=True))
        factors = tuple(a * b for a, b in zip(last.factors, step, strict=True))
        levels.append(Level(f"s{len(levels)}", shape_next, factors, step))  # type: ignore[arg-type]
    return levels


def _transforms(
    level: Level, voxel_size: tuple[float, float, float], centred: bool
) -> list[dict[str, Any]]:
    scale = [v * f for v, f in zip(voxel_size, level.factors, strict=True)]
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if centred and level.factors != (1, 1, 1):
        shift = [v * (f - 1) / 2 for v, f in zip(voxel_size, level.factors, strict=True)]
        transforms.append({"type": "translation", "translation": shift})
    return transforms


def _axes(unit: str | None) -> list[dict[str, str]]:
    return [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in AXES]


def _create_multiscale(
    group: zarr.Group,
    levels: list[Level],
    dtype: Any,
    where: Where,
    name: str,
    how: str,
) -> list[zarr.Array[Any]]:
    storage, voxel_size, unit = where
    arrays = [
        group.create_array(
            level.path,
            shape=level.shape,
            chunks=tuple(min(c, n) for c, n in zip(storage, level.shape, strict=True)),
            dtype=dtype,
            fill_value=0,
            # Level 1: a third less CPU than zarr's default level for ~3% larger chunks
            # (measured on objectness and label volumes).
            compressors=ZstdCodec(level=1),
            dimension_names=AXES,
            # The store cannot delete; an all-zero chunk is written rather than removed.
            config={"write_empty_chunks": True},
        )
        for level in levels
    ]
    # A mean moves a coarse voxel's centre to the middle of its footprint; a subsample does not.
    centred = how == "mean"
    datasets = [
        {"path": level.path, "coordinateTransformations": _transforms(level, voxel_size, centred)}
        for level in levels
    ]
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    kind, function = METHODS[how]
    write_multiscales_metadata(
        group,
        datasets,
        fmt=FormatV05(),
        axes=_axes(unit),
        name=name,
        metadata={"method": function, "description": _DESCRIPTIONS[how]},
    )
    # ome-zarr-py passes "metadata" on but drops "type".
    _amend(group, lambda ome: ome["multiscales"][0].update(type=kind))
    return arrays


_DESCRIPTIONS = {
    "mean": "mean over each level's footprint (the halved axes), an odd edge repeating its last",
    "nearest": "every other voxel along the halved axes (a label stays a label)",
}


def _amend(group: zarr.Group, change: Callable[[dict[str, Any]], object]) -> None:
    """Edit the group's ``ome`` attributes in place (``change`` mutates the dict)."""
    ome: dict[str, Any] = dict(cast("dict[str, Any]", group.attrs["ome"]))
    change(ome)
    group.attrs["ome"] = ome


def label_colors(count: int) -> list[dict[str, Any]]:
    """Distinct, reproducible colours for labels 1..count: hues a golden angle apart, so
    neighbouring labels (fibers numbered along z then y then x) differ."""
    colors = []
    for value in range(1, count + 1):
        hue = (value * 0.618033988749895) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, 0.75 + 0.25 * (value % 2), 0.95)
        colors.append({"label-value": value, "rgba": [round(255 * c) for c in rgb] + [255]})
    return colors


def create_image(
    store: ObjectZarrStore,
    levels: list[Level],
    dtype: Any,
    name: str,
    where: Where,
) -> tuple[zarr.Group, list[zarr.Array[Any]]]:
    """The root group, the image's arrays and its metadata (no chunk data yet)."""
    root = zarr.create_group(store, zarr_format=3)
    return root, _create_multiscale(root, levels, dtype, where, name, "mean")


def create_labels(
    root: zarr.Group,
    levels: list[Level],
    dtype: Any,
    name: str,
    where: Where,
    *,
    count: int = 0,
    properties: list[dict[str, Any]] | None = None,
) -> list[zarr.Array[Any]]:
    """The image's label image: its arrays and metadata. ``count``: the labels are 1..count;
    ``properties``: one dict for each (with its ``label-value``), kept for at most
    ``MAX_DESCRIBED_LABELS`` labels."""
    labels_group = root.create_group("labels")
    fibers = labels_group.create_group(name)
    labels = _create_multiscale(fibers, levels, dtype, where, name, "nearest")
    colored = count <= MAX_COLORED_LABELS
    described = properties if 0 < count <= MAX_DESCRIBED_LABELS else None
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_label_metadata

    # source: where viewers find the image these labels belong to (the root, two levels up).
    write_label_metadata(
        labels_group,
        name,
        colors=label_colors(count) if colored else [],
        properties=described,
        fmt=FormatV05(),
        source={"image": "../../"},
    )
    # ome-zarr-py (0.16) writes the labels group's "ome" without the "version" NGFF 0.5
    # requires of every group's "ome"; validators reject the whole image without it.
    _amend(labels_group, lambda ome: ome.setdefault("version", NGFF_VERSION))
    return labels


def downsample_mean(block: NDArray[Any], step: tuple[int, int, int]) -> NDArray[Any]:
    """Mean over ``step`` footprints; an odd edge repeats its last voxel. Floats are summed in
    their own type, one strided view of the footprint at a time: 5x less CPU than a float64
    mean over a reshaped view (a non-contiguous reduction), for a last-bit difference."""
    pad = [(0, (-n) % f) for n, f in zip(block.shape, step, strict=True)]
    data = np.pad(block, pad, mode="edge") if any(p for _, p in pad) else block
    total = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    parts = [
        data[i :: step[0], j :: step[1], k :: step[2]]
        for i in range(step[0])
        for j in range(step[1])
        for k in range(step[2])
    ]
    acc = parts[0].astype(total, copy=True)
    for part in parts[1:]:
        np.add(acc, part, out=acc)
    acc *= 1.0 / len(parts)
    out: NDArray[Any] = acc.astype(block.dtype, copy=False)
    return out


def downsample_nearest(block: NDArray[Any], step: tuple[int, int, int]) -> NDArray[Any]:
    out: NDArray[Any] = block[:: step[0], :: step[1], :: step[2]]
    return out


def write_region(
    block: NDArray[Any], target: zarr.Array[Any], corner: tuple[int, ...]
) -> list[ObjectInfo]:
    """Runs on a worker: the storage chunks that ``block`` covers, from ``corner`` on, each
    written whole (the region is chunk-aligned); returns what the store wrote, per chunk."""
    if any(c % n for c, n in zip(corner, target.chunks, strict=True)):
        raise ValueError(f"region at {corner} is not aligned to chunks {target.chunks}")
    region = tuple(slice(c, c + n) for c, n in zip(corner, block.shape, strict=True))
    target[region] = block
    store = target.store
    assert isinstance(store, ObjectZarrStore)
    first = [c // n for c, n in zip(corner, target.chunks, strict=True)]
    count = [math.ceil(b / n) for b, n in zip(block.shape, target.chunks, strict=True)]
    coords = [tuple(f + i for f, i in zip(first, idx, strict=True)) for idx in np.ndindex(*count)]
    prefix = f"{target.path}/" if target.path else ""  # "" for an array at the store's root
    keys = [prefix + target.metadata.encode_chunk_key(c) for c in coords]
    return store.take_written(keys)


def write_sampled(
    block: NDArray[Any], target: zarr.Array[Any], corner: tuple[int, ...], stride: int | None
) -> tuple[list[ObjectInfo], NDArray[Any]]:
    """Runs on a worker: ``write_region``, and the block's voxels of the volume's
    ``[::stride]`` grid along every axis (empty for ``stride`` None)."""
    if stride is None:
        sample = block[:0, :0, :0]
    else:
        sample = block[tuple(slice((-c) % stride, None, stride) for c in corner)]
    return write_region(block, target, corner), np.ascontiguousarray(sample).ravel()


def downsample_region(
    source: zarr.Array[Any],
    target: zarr.Array[Any],
    corner: tuple[int, ...],
    shape: tuple[int, ...],
    step: tuple[int, int, int],
    how: str,
) -> list[ObjectInfo]:
    """Runs on a worker: the region of a coarser level at ``corner`` (``shape``, chunk
    aligned) from the stored finer level, one footprint of ``step`` per voxel."""
    region = tuple(
        slice(c * f, min((c + n) * f, size))
        for c, n, f, size in zip(corner, shape, step, source.shape, strict=True)
    )
    fn = downsample_mean if how == "mean" else downsample_nearest
    return write_region(fn(np.asarray(source[region]), step), target, corner)


def coarse_regions(
    level: Level, storage: tuple[int, ...], block: tuple[int, ...]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(corner, shape) of the tasks that write ``level``: each reads at most a ``block`` of
    the finer level (the compute chunk, which a worker holds), and writes whole storage
    chunks of its own."""
    sides = [max(c, (b // f) // c * c) for c, b, f in zip(storage, block, level.step, strict=True)]
    return [
        (corner, tuple(min(s, n - o) for s, n, o in zip(sides, level.shape, corner, strict=True)))
        for corner in itertools.product(
            *(range(0, n, s) for n, s in zip(level.shape, sides, strict=True))
        )
    ]
