"""``tractogram.trx``: the shards concatenated in order, readable by trx-python and dipy."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.io.stateful_tractogram import Space, StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram
from trx.trx_file_memmap import load as load_trx

from consumers.pipelines.diffusion.merge import TRACTOGRAM, merge_shards
from consumers.pipelines.diffusion.tracking import reference_header
from shared.store import LocalStore

SHAPE = (20, 30, 10)
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -30], [0, 0, 2.0, -10], [0, 0, 0, 1]])


def _shards(folder: Path, suffix: str, sizes: list[int]) -> tuple[list[str], list[np.ndarray]]:
    rng = np.random.default_rng(3)
    header = reference_header(AFFINE, SHAPE, (2.0, 2.0, 2.0))
    keys, every = [], []
    for i, count in enumerate(sizes):
        lines = [
            rng.uniform([-20.5, -30.5, -10.5], [18.5, 28.5, 8.5], (int(rng.integers(2, 9)), 3))
            for _ in range(count)
        ]
        path = folder / f"shards/sl-{i:04d}.{suffix}"
        path.parent.mkdir(exist_ok=True)
        save_tractogram(StatefulTractogram(lines, header, Space.RASMM), str(path))
        keys.append(f"shards/sl-{i:04d}.{suffix}")
        # What dipy reads back from the shard: the streamlines the merge must hold.
        read = load_tractogram(str(path), _reference(), bbox_valid_check=True)
        every += [np.asarray(s) for s in read.streamlines]
    return keys, every


def _reference() -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)


@pytest.mark.parametrize("suffix", ["trk", "trx"])
def test_the_merge_holds_every_shard_in_order(suffix: str, tmp_path: Path) -> None:
    keys, expected = _shards(tmp_path, suffix, [5, 0, 7, 3])  # an empty shard among them
    merged = merge_shards(LocalStore(tmp_path), keys, AFFINE, SHAPE)
    assert merged.info.key == TRACTOGRAM and merged.streamlines == len(expected) == 15
    assert all((tmp_path / key).is_file() for key in keys)  # the shards stay
    assert merged.points == sum(len(s) for s in expected)
    trx = load_trx(str(tmp_path / TRACTOGRAM))
    try:
        ours = [np.array(s) for s in trx.streamlines]
        np.testing.assert_array_equal(trx.header["DIMENSIONS"], SHAPE)
        np.testing.assert_allclose(trx.header["VOXEL_TO_RASMM"], AFFINE)
    finally:
        trx.close()
    sft = load_tractogram(str(tmp_path / TRACTOGRAM), _reference(), bbox_valid_check=True)
    assert isinstance(sft, StatefulTractogram)  # dipy returns False when the check fails
    for read in (ours, [np.asarray(s) for s in sft.streamlines]):
        assert [len(s) for s in read] == [len(s) for s in expected]
        # float32 rounding of dipy's trip through voxel space, ~1e-6 mm
        assert max(float(np.abs(a - b).max()) for a, b in zip(read, expected, strict=True)) <= 1e-5


def test_no_streamlines_merge_into_an_empty_tractogram(tmp_path: Path) -> None:
    keys, _ = _shards(tmp_path, "trk", [0, 0])
    merged = merge_shards(LocalStore(tmp_path), keys, AFFINE, SHAPE)
    assert merged.streamlines == merged.points == 0
    sft = load_tractogram(str(tmp_path / TRACTOGRAM), _reference(), bbox_valid_check=True)
    assert isinstance(sft, StatefulTractogram) and len(sft) == 0
