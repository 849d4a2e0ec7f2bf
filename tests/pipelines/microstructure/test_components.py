"""Components across blocks, two passes a block at a time, equal scipy's on the whole volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from scipy import ndimage

from consumers.pipelines.microstructure import components, fiberstats, relabel
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.store import LocalStore

MIN_VOXELS = 20
CHUNKS = ((8, 12, 12), (16, 16), (4, 8, 8, 12))  # uneven, one thin: faces everywhere


def _stored(
    values: np.ndarray, tmp_path: Path, name: str, chunks: tuple[int, ...] = (4, 4, 4)
) -> zarr.Array[Any]:
    store = ObjectZarrStore(LocalStore(tmp_path / name))
    array = zarr.create_array(
        store,
        shape=values.shape,
        chunks=chunks,
        dtype=values.dtype,
        config={"write_empty_chunks": True},  # as the output's arrays: the store cannot delete
    )
    array[:] = values
    return array


def _serial_fibers(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    fibers = sizes >= MIN_VOXELS
    fibers[0] = False
    renumber = np.zeros(count + 1, np.uint32)
    renumber[fibers] = np.arange(1, fibers.sum() + 1)
    return renumber[labels], count, sizes[1:]


def _two_passes(values: np.ndarray, threshold: float, tmp_path: Path) -> dict[str, Any]:
    source = _stored(values, tmp_path, "objectness")
    # Storage chunks the blocks' corners align to (the pipeline's blocks are multiples).
    target = _stored(np.zeros(values.shape, np.uint32), tmp_path, "labels", (4, 16, 4))
    regions = components.block_regions(CHUNKS)
    blocks = [components.measure(source, c, s, threshold, MIN_VOXELS) for c, s in regions]
    grid = tuple(len(axis) for axis in CHUNKS)
    pairs = [
        (i, j, components.face_pairs(blocks[i], blocks[j], axis))
        for i, j, axis in components.neighbours(grid)
    ]
    joined = components.join([components.summary(b) for b in blocks], pairs)
    table = relabel.lookup(joined.moments, MIN_VOXELS)
    for (corner, shape), lookup in zip(regions, joined.lookups(table), strict=True):
        components.write_fibers(source, target, corner, shape, threshold, MIN_VOXELS, lookup)
    stats = fiberstats.fiber_statistics(
        joined.moments,
        values.size,
        min_fiber_voxels=MIN_VOXELS,
        voxel_size=(1.0, 1.0, 1.0),
        with_orientation=False,
        specks=joined.specks,
    )
    return {"labels": target[:], "joined": joined, "stats": stats, "blocks": blocks}


def _noisy_rods(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.random((32, 32, 32)).astype(np.float32) * 0.6  # specks above 0.5
    zz, yy, xx = np.indices(values.shape)
    for cy, cx in rng.uniform(4, 28, size=(6, 2)):
        values[(yy - cy - 0.1 * zz) ** 2 + (xx - cx) ** 2 < 6] = 1.0  # rods crossing blocks
    values[10:12, 3:29, 14:16] = 1.0  # a bridge: joins rods through several blocks
    return values


@pytest.mark.parametrize("seed", [1, 2])
def test_two_passes_equal_scipy_on_the_whole_volume(seed: int, tmp_path: Path) -> None:
    values = _noisy_rods(seed)
    ours = _two_passes(values, 0.5, tmp_path)
    expected, count, sizes = _serial_fibers(values > 0.5)
    assert 3 <= expected.max() < count  # fibers kept, specks dropped
    np.testing.assert_array_equal(ours["labels"], expected)
    stats = ours["stats"]
    assert stats["components"] == ours["joined"].count == count
    assert stats["segmented_voxels"] == int((values > 0.5).sum())
    assert stats["largest_component_voxels"] == int(sizes.max())
    assert stats["size_histogram_voxels"] == fiberstats.size_histogram(sizes)
    # Specks inside their blocks were counted there, not merged in the consumer.
    assert ours["joined"].specks.count > 0


def test_a_mask_that_fills_the_volume_is_one_fiber(tmp_path: Path) -> None:
    values = np.ones((32, 32, 32), np.float32)
    ours = _two_passes(values, 0.5, tmp_path)
    assert ours["stats"]["components"] == ours["stats"]["fibers"] == 1
    assert (ours["labels"] == 1).all()


def test_an_empty_mask_has_no_components(tmp_path: Path) -> None:
    ours = _two_passes(np.zeros((32, 32, 32), np.float32), 0.5, tmp_path)
    assert ours["stats"]["components"] == ours["stats"]["fibers"] == 0
    assert ours["stats"]["size_histogram_voxels"] == {"edges": [1, 2], "counts": [0]}
    assert not ours["labels"].any()


def test_a_speck_on_a_face_is_kept_for_the_join(tmp_path: Path) -> None:
    # A 24-voxel rod in three z blocks (8, 12 and 4 voxels: specks in each): joined, a fiber.
    values = np.zeros((32, 32, 32), np.float32)
    values[0:24, 20, 20] = 1.0
    values[0:3, 2, 2] = 1.0  # a speck inside the first block: dropped there
    ours = _two_passes(values, 0.5, tmp_path)
    assert ours["stats"]["fibers"] == 1 and ours["stats"]["components"] == 2
    assert ours["joined"].specks.count == 1
    assert int(ours["labels"].sum()) == 24  # the rod alone, label 1
