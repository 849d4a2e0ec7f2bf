"""Streamlines at the image's edge: every point a dipy tracker can return is kept inside the
bounding box that dipy's and trx-python's readers check, and no point away from a face moves."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trx.trx_file_memmap as trx_memmap
from dipy.io.stateful_tractogram import StatefulTractogram
from dipy.io.streamline import load_tractogram, save_tractogram
from dipy.io.utils import Space
from nibabel.streamlines.array_sequence import ArraySequence

from consumers.pipelines.diffusion.bounds import (
    EDGE_TOLERANCE,
    EdgeCounts,
    keep_in_grid,
    margin_voxels,
)


def centred(shape: tuple[int, int, int], voxel: float) -> np.ndarray:
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * voxel
    return affine


def oblique(shape: tuple[int, int, int]) -> np.ndarray:
    """LAS, 2 mm, rotated 20 degrees about z, scanner-style offsets."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-2.0, 2.0, 2.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation
    affine[:3, 3] = [96.0, -120.5, -61.25]
    return affine


GRIDS = {
    "hcp": ((145, 174, 145), centred((145, 174, 145), 1.25)),
    "small64d-like": ((10, 10, 10), centred((10, 10, 10), 2.0)),
    "oblique-las": ((40, 48, 30), oblique((40, 48, 30))),
    "ex-vivo-0.1mm": ((300, 200, 150), centred((300, 200, 150), 0.1)),
}


def header(affine: np.ndarray, shape: tuple[int, int, int]) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_sform(affine, code=1)
    hdr.set_zooms(tuple(np.linalg.norm(affine[:3, :3], axis=0)))
    return hdr


def edge_streamlines(
    affine: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator, n: int = 400
) -> ArraySequence:
    """Streamlines from the interior to every face, each ending where a tracker may stop it:
    within 1e-6 voxels of the face on either side (dipy's check is ``-0.5 <= i``), or exactly
    on it; also a few that stay inside."""
    dims = np.asarray(shape, dtype=np.float64)
    lines = []
    for k in range(n):
        axis, side = k % 3, (k // 3) % 2
        end = rng.uniform(0.5, dims - 1.5)
        face = -0.5 if side == 0 else dims[axis] - 0.5
        end[axis] = face + rng.choice([-1e-7, 0.0, 1e-9, 1e-7, 1e-6]) * (1 if side == 0 else -1)
        start = end.copy()
        start[axis] = dims[axis] / 2
        vox = np.linspace(start, end, 8)
        lines.append(vox @ affine[:3, :3].T + affine[:3, 3])
    for _ in range(20):
        vox = rng.uniform(1.0, dims - 2.0, size=(6, 3))
        lines.append(vox @ affine[:3, :3].T + affine[:3, 3])
    return ArraySequence(lines)


def reload_both(
    streamlines: ArraySequence, hdr: nib.Nifti1Header, where: Path, ref: Path
) -> list[int]:
    """Save as .trk and .trx with dipy's check on, load each back with the check on (dipy) and
    with trx-python; the streamline counts read back."""
    counts = []
    sft = StatefulTractogram(streamlines, hdr, Space.RASMM)
    for suffix in ("trk", "trx"):
        path = where / f"t.{suffix}"
        save_tractogram(sft, str(path), bbox_valid_check=True)
        back = load_tractogram(str(path), str(ref), bbox_valid_check=True)
        assert isinstance(back, StatefulTractogram), f".{suffix} does not load with the check"
        counts.append(len(back.streamlines))
    trx = trx_memmap.load(str(where / "t.trx"))
    try:
        counts.append(len(trx.streamlines))
        assert trx.to_sft().is_bbox_in_vox_valid()
    finally:
        trx.close()
    return counts


@pytest.mark.parametrize("grid", list(GRIDS))
def test_edge_streamlines_load_with_every_check(grid: str, tmp_path: Path) -> None:
    shape, affine = GRIDS[grid]
    rng = np.random.default_rng(5)
    raw = edge_streamlines(affine, shape, rng)
    hdr = header(affine, shape)
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine, hdr), ref)

    # Without the fix, dipy refuses these (the test can fail).
    logging.disable(logging.ERROR)
    try:
        assert not StatefulTractogram(raw, hdr, Space.RASMM).is_bbox_in_vox_valid()
    finally:
        logging.disable(logging.NOTSET)

    kept, counts = keep_in_grid(raw, affine, shape)
    assert counts.cut == counts.dropped == 0 and counts.snapped > 0
    assert len(kept) == len(raw) and np.array_equal(kept._lengths, raw._lengths)
    assert reload_both(kept, hdr, tmp_path, ref) == [len(raw)] * 3

    # Only points on a face moved, by at most the margin; every other point is bit for bit.
    before, after = raw.get_data(), kept.get_data()
    inverse = np.linalg.inv(affine)
    vox = before @ inverse[:3, :3].T + inverse[:3, 3]
    dims = np.asarray(shape)
    on_face = ((vox < -0.5 + EDGE_TOLERANCE) | (vox > dims - 0.5 - EDGE_TOLERANCE)).any(axis=1)
    assert np.array_equal(before[~on_face], after[~on_face])
    moved_vox = np.abs((after - before) @ inverse[:3, :3].T).max()
    margin = margin_voxels(affine, shape)
    assert 0 < margin <= EDGE_TOLERANCE and moved_vox <= 1.01 * margin


def test_streamlines_away_from_the_edge_are_returned_as_they_are() -> None:
    shape, affine = GRIDS["hcp"]
    lines = ArraySequence([np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])])
    kept, counts = keep_in_grid(lines, affine, shape)
    assert kept is lines and counts == EdgeCounts()
    empty = ArraySequence()
    assert keep_in_grid(empty, affine, shape) == (empty, EdgeCounts())


def test_streamlines_leaving_the_grid_are_cut_at_the_edge(tmp_path: Path) -> None:
    shape, affine = (10, 10, 10), np.eye(4)
    through = np.array([[-3.0, 5, 5], [-1.0, 5, 5], [0.0, 5, 5], [4.0, 5, 5], [12.0, 5, 5]])
    # In and out twice: the longest run inside (three points) is what stays.
    zigzag = np.array([[5.0, 5, 5], [6, 5, 5], [5, 5, 11], [5, 5, 4], [5, 5, 3], [5, 5, 2]])
    outside = np.array([[-4.0, 1, 1], [-3.0, 1, 1], [5.0, 5, 20]])
    inside = np.array([[1.0, 1, 1], [2.0, 2, 2]])
    lines = ArraySequence([through, zigzag, outside, inside])
    kept, counts = keep_in_grid(lines, affine, shape)
    assert counts == EdgeCounts(snapped=0, cut=2, dropped=1)
    assert len(kept) == 3
    np.testing.assert_array_equal(kept[0], through[2:4])
    np.testing.assert_array_equal(kept[1], zigzag[3:])
    np.testing.assert_array_equal(kept[2], inside)
    ref = tmp_path / "ref.nii.gz"
    hdr = header(affine, shape)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine, hdr), ref)
    assert reload_both(kept, hdr, tmp_path, ref) == [3, 3, 3]


def test_counts_add_up() -> None:
    assert EdgeCounts(1, 2, 3) + EdgeCounts(4, 5, 6) == EdgeCounts(5, 7, 9)
    assert EdgeCounts(1, 0, 2).as_dict() == {"snapped": 1, "cut": 0, "dropped": 2}
