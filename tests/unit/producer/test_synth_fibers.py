from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from producer.synth import fibers
from producer.synth.fibers import PhantomSpec, make_phantom, place_fibers, render_slab
from shared.errors import InvalidInput
from shared.settings import Settings


@pytest.fixture(scope="module")
def phantom() -> fibers.Phantom:
    return make_phantom(PhantomSpec(shape=(48, 64, 64), seed=3))


def test_fibers_never_overlap_and_fill_the_target_fraction(phantom: fibers.Phantom) -> None:
    spec = phantom.spec
    owners = np.zeros(spec.shape, dtype=np.int32)
    zs = np.arange(spec.shape[0], dtype=np.float64)[:, None, None] - (spec.shape[0] - 1) / 2
    ys = np.arange(spec.shape[1], dtype=np.float64)[None, :, None]
    xs = np.arange(spec.shape[2], dtype=np.float64)[None, None, :]
    for fiber in phantom.fibers:
        owners += fibers.axis_distance(fiber, zs, ys, xs) <= fiber.radius
    assert owners.max() == 1  # every voxel inside one fiber at most
    np.testing.assert_array_equal(owners.astype(np.uint8), phantom.truth)
    assert phantom.volume_fraction == pytest.approx(spec.volume_fraction, abs=0.03)
    radii = [f.radius for f in phantom.fibers]
    assert spec.radius[0] <= min(radii) and max(radii) <= spec.radius[1]


def test_intensities_look_like_a_reconstruction(phantom: fibers.Phantom) -> None:
    volume, truth = phantom.volume, phantom.truth.astype(bool)
    assert volume is not None and volume.dtype == np.uint16
    fiber, matrix = volume[truth].mean(), volume[~truth].mean()
    assert 20_000 < fiber < 27_000 and 9_000 < matrix < 12_000
    assert 1_500 < np.std(np.diff(volume.astype(np.float64), axis=0)) / np.sqrt(2) < 3_500


def test_same_seed_same_phantom_and_slabs_do_not_matter(phantom: fibers.Phantom) -> None:
    again = make_phantom(phantom.spec)
    np.testing.assert_array_equal(again.volume, phantom.volume)
    top, top_truth = render_slab(phantom.spec, phantom.fibers, 0, 20)
    rest, rest_truth = render_slab(phantom.spec, phantom.fibers, 20, 48)
    np.testing.assert_array_equal(np.concatenate([top, rest]), phantom.volume)
    np.testing.assert_array_equal(np.concatenate([top_truth, rest_truth]), phantom.truth)
    other = place_fibers(PhantomSpec(shape=(48, 64, 64), seed=4))
    assert other != phantom.fibers


def test_a_given_number_of_fibers_or_a_clear_refusal() -> None:
    assert len(place_fibers(PhantomSpec(shape=(32, 32, 32), fibers=4))) == 4
    with pytest.raises(InvalidInput, match="fibers fit"):
        place_fibers(PhantomSpec(shape=(32, 32, 32), fibers=500))
    for bad in (
        {"shape": (4, 32, 32)},
        {"volume_fraction": 0.9},
        {"radius": (5.0, 2.0)},
        {"tilt_deg": 60.0},
        {"seed": -1},
    ):
        with pytest.raises(InvalidInput):
            PhantomSpec(**bad)  # type: ignore[arg-type]


def test_written_array_and_its_truth_beside_it(tmp_path: Path) -> None:
    uri = str(tmp_path / "vols" / "s1.zarr")
    written = fibers.write_phantom(uri, PhantomSpec(shape=(40, 40, 40), seed=2), Settings())
    assert fibers.truth_uri(uri) == str(tmp_path / "vols" / "_truth" / "s1.zarr")
    volume = zarr.open_array(uri, mode="r")
    truth = zarr.open_array(fibers.truth_uri(uri), mode="r")
    assert volume.shape == truth.shape == (40, 40, 40)
    assert volume.dtype == np.uint16 and truth.dtype == np.uint8
    assert volume.metadata.zarr_format == 3
    assert volume.attrs["voxel_size"] == [1.0, 1.0, 1.0]
    info = volume.attrs["voxfleet_phantom"]
    assert info["fibers"] == len(written.fibers)
    assert info["volume_fraction"] == pytest.approx(truth[:].mean(), abs=1e-6)
    expected = make_phantom(PhantomSpec(shape=(40, 40, 40), seed=2))
    np.testing.assert_array_equal(volume[:], expected.volume)


def test_a_campaign_listing_the_folder_finds_the_phantoms_not_their_truth(tmp_path: Path) -> None:
    from producer.inputs import marker_folders
    from shared.params import MicrostructureParams

    for name in ("s1.zarr", "s2.zarr"):
        fibers.write_phantom(str(tmp_path / name), PhantomSpec(shape=(32, 32, 32)), Settings())
    rows = marker_folders(str(tmp_path), MicrostructureParams.input_marker, Settings())
    assert sorted(row.subject for row in rows) == ["s1.zarr", "s2.zarr"]


def test_cli_synth_fibers(tmp_path: Path) -> None:
    from producer.cli import app

    target = tmp_path / "cli.zarr"
    result = CliRunner().invoke(
        app, ["synth", "fibers", str(target), "--shape", "32", "--fibers", "5", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "5 fibers" in result.output and "_truth/cli.zarr" in result.output
    assert zarr.open_array(str(target), mode="r").shape == (32, 32, 32)


# Stress phantoms (issue #19): touching and crossing fibers.


def test_the_default_phantom_is_unchanged_byte_for_byte(phantom: fibers.Phantom) -> None:
    """The stress options take their own packing: the default draws stay as they were (pinned
    with the locked numpy; the hashes are of the phantom before the options existed)."""
    import hashlib

    assert phantom.volume is not None and phantom.truth is not None
    assert hashlib.sha256(phantom.volume.tobytes()).hexdigest() == (
        "5e1e7d6ad2afd68fd765c7721a83b80fd26d264f0247381c25168b82aa188c47"
    )
    assert hashlib.sha256(phantom.truth.tobytes()).hexdigest() == (
        "3ada5b0117cdad14d28b2ce8df95b4e8b3e31b0bf2123a234d0f9231aaedd39a"
    )
    assert len(phantom.fibers) == 35


def _surface_gaps(placed: list[fibers.Fiber], half: float) -> np.ndarray:
    """Surface-to-surface distance of every pair (inf on the diagonal)."""
    from producer.synth.packing import _distance

    centers = np.array([f.center for f in placed])
    slopes = np.array([f.slope for f in placed])
    radii = np.array([f.radius for f in placed])
    gaps = np.full((len(placed), len(placed)), np.inf)
    for i in range(len(placed)):
        d = _distance(centers[i], slopes[i], centers, slopes, half) - radii[i] - radii
        gaps[i] = np.where(np.arange(len(placed)) == i, np.inf, d)
    return gaps


def test_touching_fibers_touch_and_still_never_overlap() -> None:
    from scipy import ndimage

    spec = PhantomSpec(
        shape=(48, 64, 64), radius=(4.0, 4.0), volume_fraction=0.3, gap=0.0, contact=0.6, seed=5
    )
    touching = make_phantom(spec)
    gaps = _surface_gaps(touching.fibers, spec.shape[0] / 2)
    assert gaps.min() >= -1e-6  # surfaces in contact at most, never inside each other
    in_contact = np.abs(gaps) < 1e-6
    assert in_contact.any(axis=1).mean() > 0.5  # most fibers touch one
    assert touching.volume_fraction == pytest.approx(0.3, abs=0.03)
    # Voxel by voxel, touching fibers are one component of the truth.
    _, components = ndimage.label(touching.truth, np.ones((3, 3, 3)))
    assert components < 0.7 * len(touching.fibers)
    # Without contact, random sequential addition at gap 1 leaves every fiber apart.
    apart = make_phantom(PhantomSpec(shape=(48, 64, 64), radius=(4.0, 4.0), volume_fraction=0.3))
    assert _surface_gaps(apart.fibers, 24).min() >= 1.0 - 1e-6
    _, components = ndimage.label(apart.truth, np.ones((3, 3, 3)))
    assert components > 0.85 * len(apart.fibers)  # some placed ones only graze the sides


def test_a_crossing_share_lays_two_direction_populations() -> None:
    spec = PhantomSpec(
        shape=(64, 64, 64), radius=(3.0, 3.0), volume_fraction=0.3, crossing_share=0.3, seed=2
    )
    crossed = make_phantom(spec)
    directions = np.array([[1.0, *f.slope] for f in crossed.fibers])
    directions /= np.linalg.norm(directions, axis=1)[:, None]
    tilts = np.degrees(np.arccos(directions[:, 0]))
    first = tilts < 10
    # The first population keeps the common tilt; the second makes crossing_deg with it.
    limit = spec.misalignment_deg + 0.01
    assert np.all(np.abs(tilts[first] - spec.tilt_deg) <= limit)
    mean_first = directions[first].mean(axis=0)
    mean_first /= np.linalg.norm(mean_first)
    between = np.degrees(np.arccos(np.clip(directions[~first] @ mean_first, -1, 1)))
    assert np.all(np.abs(between - spec.crossing_deg) <= 2 * limit)
    assert 0.15 < (~first).mean() < 0.5
    # Each population alone keeps its gap; the two pass through each other (junctions).
    gaps = _surface_gaps([f for f, a in zip(crossed.fibers, first, strict=True) if a], 32)
    assert gaps.min() >= spec.gap - 1e-6
    owners = np.zeros(spec.shape, dtype=np.int32)
    zs = np.arange(64, dtype=np.float64)[:, None, None] - 31.5
    ys, xs = zs.reshape(1, 64, 1) + 31.5, zs.reshape(1, 1, 64) + 31.5
    for fiber in crossed.fibers:
        owners += fibers.axis_distance(fiber, zs, ys, xs) <= fiber.radius
    assert owners.max() >= 2
    np.testing.assert_array_equal((owners > 0).astype(np.uint8), crossed.truth)
    assert crossed.volume_fraction == pytest.approx(0.3, abs=0.03)
    # Every plane near the target: the second population reaches the volume's corners too.
    assert crossed.truth is not None
    planes = crossed.truth.mean(axis=(1, 2))
    assert planes.min() > 0.22 and planes.max() < 0.38


def test_the_stress_phantom_of_issue_19() -> None:
    spec = fibers.stress_spec((48, 64, 64), seed=1)
    assert spec.radius == (4.0, 4.0) and spec.psf == 0 and spec.gap == 0
    assert spec.noise == pytest.approx(0.25 * (spec.fiber - spec.matrix))
    assert spec.contact > 0 and spec.crossing_share > 0
    stressed = make_phantom(spec)
    assert stressed.volume_fraction == pytest.approx(0.30, abs=0.03)
    assert fibers.stress_spec((32, 32, 32), noise_share=0.1, radius=3.0).radius == (3.0, 3.0)
    for bad in (
        {"gap": -1.0},  # pressed in without contact
        {"gap": -5.0, "contact": 0.5},  # deeper than the radius
        {"contact": 1.5},
        {"crossing_share": 1.0},
        {"crossing_deg": 50.0, "crossing_share": 0.2},
    ):
        with pytest.raises(InvalidInput):
            PhantomSpec(**bad)  # type: ignore[arg-type]


def test_cli_synth_fibers_stress_and_its_options(tmp_path: Path) -> None:
    from producer.cli import app

    runner = CliRunner()
    target = tmp_path / "stress.zarr"
    args = ["synth", "fibers", str(target), "--shape", "40", "--stress", "--noise", "0.1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = cast(dict[str, Any], zarr.open_array(str(target), mode="r").attrs["voxfleet_phantom"])
    assert info["spec"]["noise"] == pytest.approx(1600.0)
    assert info["spec"]["psf"] == 0 and info["spec"]["crossing_share"] > 0
    assert info["volume_fraction"] == pytest.approx(0.30, abs=0.04)
    custom = tmp_path / "custom.zarr"
    args = ["synth", "fibers", str(custom), "--shape", "40", "--radius", "3", "--blur", "0"]
    result = runner.invoke(
        app, [*args, "--contact", "0.5", "--gap", "0", "--crossing-share", "0.2"]
    )
    assert result.exit_code == 0, result.output
    written = cast(dict[str, Any], zarr.open_array(str(custom), mode="r").attrs["voxfleet_phantom"])
    spec = written["spec"]
    assert spec["radius"] == [3.0, 3.0] and spec["contact"] == 0.5 and spec["gap"] == 0
    helped = runner.invoke(app, ["synth", "fibers", "--help"])
    assert "--stress" in helped.output and "--crossing-deg" in helped.output
