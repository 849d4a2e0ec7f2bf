"""Deterministic tracking over the white matter's bounding box gives the streamlines tracking
over the whole grid gives, bit for bit: with the step the job uses and a longer one, and for
white matter cut by the volume's edge. The probabilistic tracker's draws move with the box, so
the job keeps it on the whole grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst
from dipy.reconst.dti import TensorModel

from consumers.pipelines.diffusion import tracking
from consumers.pipelines.diffusion.box import Box, margin_voxels
from consumers.pipelines.diffusion.csd import CsdFit
from consumers.pipelines.diffusion.subject import load_subject
from consumers.pipelines.diffusion.white_matter import read_segmentation, wm_from_segmentation
from producer.synth.hcp import write_subject
from shared.layouts import open_series
from shared.params.diffusion import HCP_WM_LABELS
from shared.settings import Settings
from shared.store import LocalStore

pytestmark = pytest.mark.filterwarnings("ignore:The legacy descoteaux07:PendingDeprecationWarning")


def test_box_around_a_mask_grows_clips_and_maps_to_the_same_world_points() -> None:
    mask = np.zeros((10, 12, 8), dtype=bool)
    mask[3:5, 0:2, 6:8] = True
    box = Box.around(mask, 2)
    assert box.low == (1, 0, 4) and box.high == (7, 4, 8) and box.shape == (6, 4, 4)
    assert box.fraction == pytest.approx(6 * 4 * 4 / (10 * 12 * 8))
    assert Box.around(np.zeros((4, 5, 6), bool), 3).shape == (4, 5, 6)  # empty: the whole grid

    affine = np.array([[-1.25, 0.1, 0, 90], [0, 1.25, 0.2, -126], [0, 0, 1.25, -72], [0, 0, 0, 1]])
    moved = box.affine(affine)
    for ijk in [(0, 0, 0), (2, 3, 1), (5.5, 0.25, 3)]:
        in_box = moved @ [*ijk, 1]
        in_grid = affine @ [*(np.asarray(ijk) + box.low), 1]
        np.testing.assert_allclose(in_box, in_grid, atol=1e-12)
    volume = np.arange(10 * 12 * 8).reshape(10, 12, 8)
    assert np.array_equal(box.cut(volume), volume[1:7, 0:4, 4:8])
    assert margin_voxels(0.5, (1.25, 1.25, 1.25)) == 3 and margin_voxels(2.0, (1.0, 2, 2)) == 4


def test_fit_volume_over_a_box_is_the_whole_volume_cut() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((9, 7, 6)) > 0.7
    mask[0] = mask[-1] = False
    coeffs = rng.normal(size=(int(mask.sum()), 15))
    fit = CsdFit(coeffs, mask, 1, [])
    whole = fit.shm_coeff
    assert whole.shape == (9, 7, 6, 15) and np.array_equal(whole[mask], coeffs)
    box = Box.around(mask, 0)
    assert box.shape[0] < 9
    assert np.array_equal(fit.volume(box), whole[box.slices])
    with pytest.raises(ValueError, match="every mask voxel"):
        fit.volume(Box((2, 0, 0), (9, 7, 6), (9, 7, 6)))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small synthetic subject's white matter, FA and serial dipy CSD coefficients."""
    root = tmp_path_factory.mktemp("box")
    write_subject(LocalStore(root), "100307", size="small", seed=3)
    settings = Settings()
    inputs, files = open_series(str(root / "100307"), settings)
    subject = load_subject(inputs, files, root / "work", settings, b0_threshold=50)
    labels = read_segmentation(inputs, files, root / "work", settings)
    wm = wm_from_segmentation(*labels, subject, HCP_WM_LABELS)
    fa = np.asarray(TensorModel(subject.gtab).fit(subject.data, mask=subject.mask).fa)
    fa = np.nan_to_num(fa)
    response, _ = response_from_mask_ssst(subject.gtab, subject.data, wm & (fa > 0.7))
    model = ConstrainedSphericalDeconvModel(subject.gtab, response)
    return {"subject": subject, "wm": wm, "fa": fa, "model": model}


def _options(tracker: str, step: float) -> tracking.TrackingOptions:
    return tracking.TrackingOptions(tracker, step, 30.0, 0.1, 10, 250, 42, "trk", False)


def test_probabilistic_draws_move_with_the_box(fitted: dict[str, Any]) -> None:
    """Why the job keeps the probabilistic tracker on the whole grid: over the box, the same
    seeds give other streamlines."""
    subject, wm, fa = fitted["subject"], fitted["wm"], fitted["fa"]
    coeffs = fitted["model"].fit(subject.data, mask=wm).shm_coeff
    box = Box.around(wm, margin_voxels(0.5, subject.zooms))
    seeds = tracking.make_seeds(wm, subject.affine, 1)
    options = _options("probabilistic", 0.5)
    whole = tracking.track(seeds, coeffs, fa, subject.affine, options)
    boxed = tracking.track(seeds, box.cut(coeffs), box.cut(fa), box.affine(subject.affine), options)
    assert not np.array_equal(whole._lengths, boxed._lengths)


@pytest.mark.parametrize(
    ("step", "cut"),
    [(0.5, False), (2.0, False), (0.5, True)],
    ids=["deterministic", "long-step", "wm-cut-by-the-edge"],
)
def test_tracking_over_the_box_equals_tracking_over_the_grid(
    fitted: dict[str, Any], step: float, cut: bool
) -> None:
    subject, wm, fa = fitted["subject"], fitted["wm"], fitted["fa"]
    data, affine = subject.data, subject.affine
    if cut:  # the top of the head gone: the white matter reaches the volume's face
        top = int(np.argwhere(wm)[:, 2].mean())
        data, wm, fa = data[:, :, :top], wm[:, :, :top], fa[:, :, :top]
        assert wm[:, :, -1].any()
    fit = fitted["model"].fit(data, mask=wm)
    coeffs = CsdFit(np.asarray(fit.shm_coeff)[wm], wm, 1, [])
    box = Box.around(wm, margin_voxels(step, subject.zooms))
    assert box.fraction < 1.0 or cut
    seeds = tracking.make_seeds(wm, affine, 1)
    options = _options("deterministic", step)

    whole = tracking.track(seeds, coeffs.shm_coeff, fa, affine, options)
    boxed = tracking.track(
        seeds, coeffs.volume(box), np.ascontiguousarray(box.cut(fa)), box.affine(affine), options
    )
    assert len(whole) > 50
    assert np.array_equal(whole._lengths, boxed._lengths)
    distance = float(np.abs(whole.get_data() - boxed.get_data()).max())
    print(f"step {step} cut={cut}: {len(whole)} streamlines, box {box.fraction:.2f}")
    assert distance <= 1e-9
