from __future__ import annotations

from pathlib import Path

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
        owners += fibers._axis_distance(fiber, zs, ys, xs) <= fiber.radius
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
