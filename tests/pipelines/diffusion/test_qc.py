"""QC montage helpers: RAS+ reorientation, mid-slices, PNG output with an overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from consumers.pipelines.diffusion import qc


def test_to_ras_flips_and_permutes_with_zooms() -> None:
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    # Voxel axes: i -> -x (1 mm), j -> z (3 mm), k -> y (2 mm).
    affine = np.array([[-1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    ras, zooms = qc.to_ras(volume, affine)
    assert ras.shape == (2, 4, 3)
    assert zooms == pytest.approx((1.0, 2.0, 3.0))
    np.testing.assert_array_equal(ras, volume[::-1].transpose(0, 2, 1))


def test_mid_slices_shapes() -> None:
    slices = qc.mid_slices(np.zeros((4, 5, 6)))
    assert slices["axial"].shape == (5, 4)
    assert slices["coronal"].shape == (6, 4)
    assert slices["sagittal"].shape == (6, 5)


def test_png_with_overlay(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    volume = rng.random((12, 14, 10)).astype(np.float32)
    overlay = np.zeros_like(volume)
    overlay[4:8, 5:9, 3:7] = 1.0
    path = qc.save_mid_slices(
        tmp_path / "qc" / "t.png", volume, np.diag([1.5, 1.5, 2.0, 1.0]), overlay=overlay
    )
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert imread(path).shape[2] in (3, 4)
    with pytest.raises(ValueError, match="overlay shape"):
        qc.save_mid_slices(tmp_path / "x.png", volume, np.eye(4), overlay=overlay[:-1])
    with pytest.raises(ValueError, match="3D"):
        qc.save_mid_slices(tmp_path / "x.png", volume[..., None], np.eye(4))
