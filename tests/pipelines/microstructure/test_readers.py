"""The microstructure input readers (``readers/``, ``volume.open_volume``): every format, from a
local folder and from the S3 test server, returns the source's voxels; OME-Zarr voxel sizes come
from the multiscales metadata; TIFF stacks are read slice by slice and only where asked; S3
reads are ranged; every bad input is one line."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import h5py  # type: ignore[import-untyped]
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_multiscale

from consumers.pipelines.microstructure.readers import base as readers_base
from consumers.pipelines.microstructure.readers.base import Selection
from consumers.pipelines.microstructure.readers.tiff import HEADER_BLOCK
from consumers.pipelines.microstructure.volume import open_volume
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.errors import InvalidInput, MissingInput
from shared.settings import Settings
from shared.store import LocalStore, S3Store, open_store
from tests.integration.harness import upload_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:zarr.*")

SHAPE = (24, 20, 18)  # every side different: a transposed read cannot pass
VOLUME = np.random.default_rng(4).integers(0, 4000, SHAPE).astype(np.uint16)
SPACE = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]


def _scales(*scales: list[float]) -> list[list[dict[str, Any]]]:
    return [[{"type": "scale", "scale": s}] for s in scales]


def _ome(path: Path, zarr_format: int, data: np.ndarray = VOLUME, axes: Any = SPACE) -> Path:
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    write_multiscale(
        [data, data[..., ::2, ::2, ::2]],
        group,
        fmt=FormatV04() if zarr_format == 2 else FormatV05(),
        axes=axes,
        coordinate_transformations=_scales([2.0, 0.5, 0.5], [4.0, 1.0, 1.0])
        if data.ndim == 3
        else _scales([1, 2.0, 0.5, 0.5], [1, 4.0, 1.0, 1.0]),
    )
    return path


def _stack(path: Path, data: np.ndarray = VOLUME, pattern: str = "slice_{:04d}.tif") -> Path:
    path.mkdir(parents=True)
    for i, plane in enumerate(data, start=1):
        tifffile.imwrite(path / pattern.format(i), plane)
    return path


def _hdf5(path: Path, datasets: dict[str, np.ndarray], **options: Any) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data, **options)
    return path


def _zarr_group(path: Path, zarr_format: int) -> Path:
    """An xarray-written dataset (v2: ``_ARRAY_DIMENSIONS``, coordinates, consolidated) or a
    plain v3 group with the volume below a subgroup."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    if zarr_format == 2:
        data = group.create_array("density", shape=SHAPE, dtype=VOLUME.dtype, chunks=(8, 8, 8))
        data.attrs["_ARRAY_DIMENSIONS"] = ["z", "y", "x"]
        for axis, n in zip("zyx", SHAPE, strict=True):
            coord = group.create_array(axis, shape=(n,), dtype="f8")
            coord[:] = np.arange(n) * 0.5
            coord.attrs["_ARRAY_DIMENSIONS"] = [axis]
        zarr.consolidate_metadata(str(path), zarr_format=2)
    else:
        data = group.create_group("scan").create_array("raw", shape=SHAPE, dtype=VOLUME.dtype)
        group.create_array("preview", shape=SHAPE[1:], dtype=VOLUME.dtype)
    data[...] = VOLUME
    return path


def _zarr_array(path: Path, zarr_format: Literal[2, 3]) -> Path:
    array = zarr.create_array(
        str(path), shape=SHAPE, dtype=VOLUME.dtype, chunks=(8, 8, 8), zarr_format=zarr_format
    )
    array[...] = VOLUME
    array.attrs.update(voxel_size=[3.0, 2.0, 1.0], unit="nanometer")
    return path


# format -> (writes the input below a folder, returning its name; selection; voxel size, unit)
Writer = Callable[[Path], str]
FORMATS: dict[str, tuple[Writer, Selection, tuple[float, ...] | None, str | None]] = {
    "zarr v3 array": (
        lambda d: _zarr_array(d / "v3.zarr", 3).name,
        Selection(),
        (3.0, 2.0, 1.0),
        "nanometer",
    ),
    "zarr v2 array": (
        lambda d: _zarr_array(d / "v2.zarr", 2).name,
        Selection(),
        (3.0, 2.0, 1.0),
        "nanometer",
    ),
    "xarray dataset (zarr v2)": (
        lambda d: _zarr_group(d / "xr.zarr", 2).name,
        Selection(),
        None,
        None,
    ),
    "zarr v3 group, array=": (
        lambda d: _zarr_group(d / "g.zarr", 3).name,
        Selection(array="scan/raw"),
        None,
        None,
    ),
    "ome-zarr 0.4": (lambda d: _ome(d / "i4.zarr", 2).name, Selection(), (2.0, 0.5, 0.5), "x"),
    "ome-zarr 0.5": (lambda d: _ome(d / "i5.zarr", 3).name, Selection(), (2.0, 0.5, 0.5), "x"),
    "tiff stack": (lambda d: _stack(d / "stack").name, Selection(), None, None),
    "multi-page tiff": (
        lambda d: (tifffile.imwrite(d / "vol.tiff", VOLUME), "vol.tiff")[1],
        Selection(),
        None,
        None,
    ),
    "hdf5 (dxchange)": (
        lambda d: _hdf5(d / "scan.h5", {"exchange/data": VOLUME}, chunks=(4, 10, 18)).name,
        Selection(),
        None,
        None,
    ),
    "hdf5 contiguous, dataset=": (
        lambda d: _hdf5(d / "run.nxs", {"entry/recon": VOLUME, "entry/theta": VOLUME[0]}).name,
        Selection(dataset="entry/recon"),
        None,
        None,
    ),
}


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """(the folder inputs are written to, then published from: a path or an S3 prefix)."""
    if request.param == "local":
        yield str(tmp_path / "in"), Settings()
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    yield f"s3://{request.getfixturevalue('bucket')}/in", Settings(s3_endpoint_url=endpoint)


def _publish(local: Path, where: tuple[str, Settings]) -> str:
    """The folder ``local``'s files at ``where``; its URI."""
    root, settings = where
    if root.startswith("s3://"):
        bucket, prefix = root.removeprefix("s3://").split("/", 1)
        assert settings.s3_endpoint_url is not None
        return upload_dir(local, bucket, prefix, settings.s3_endpoint_url)
    shutil.copytree(local, root)
    return root


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_reads_the_source_voxels(
    fmt: str, where: tuple[str, Settings], tmp_path: Path
) -> None:
    write, selection, sizes, unit = FORMATS[fmt]
    local = tmp_path / "local"
    local.mkdir()
    name = write(local)
    store = open_store(f"{_publish(local, where)}/{name}", where[1])
    volume = open_volume(store, where[1], selection=selection)
    assert volume.shape == SHAPE and volume.dtype == VOLUME.dtype
    assert np.array_equal(volume.array[:], VOLUME)
    assert np.array_equal(volume.array[3:17, 5, ::-3], VOLUME[3:17, 5, ::-3])
    assert volume.voxel_size == (sizes or (1.0, 1.0, 1.0))
    assert volume.unit == (None if unit is None else "micrometer" if unit == "x" else unit)
    assert volume.sample_location["voxels"] == VOLUME.size  # smaller than the sample boxes
    # What Dask ships to a worker is small and reads by itself there.
    shipped = pickle.dumps(volume.array)
    assert len(shipped) < 4000, len(shipped)
    assert np.array_equal(pickle.loads(shipped)[10:12, 2:9, 4:], VOLUME[10:12, 2:9, 4:])
    lazy = da.from_array(volume.array, chunks=(7, 9, 18), meta=np.empty((0, 0, 0), VOLUME.dtype))
    assert np.array_equal(lazy.compute(scheduler="threads"), VOLUME)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_levels_voxel_sizes_and_units(tmp_path: Path, zarr_format: int) -> None:
    path = _ome(tmp_path / "img.zarr", zarr_format)
    store, settings = LocalStore(path), Settings()
    level1 = open_volume(store, settings, selection=Selection(level=1))
    assert level1.shape == (12, 10, 9) and level1.voxel_size == (4.0, 1.0, 1.0)
    assert np.array_equal(level1.array[:], VOLUME[::2, ::2, ::2])
    assert level1.format == f"ome-zarr {'0.4' if zarr_format == 2 else '0.5'}"
    assert level1.detail == {"level": 1, "path": "s1", "levels": 2}
    # A scale for the whole multiscale multiplies each level's; the job's voxel_size wins.
    meta_file = path / (".zattrs" if zarr_format == 2 else "zarr.json")
    meta = json.loads(meta_file.read_text())
    ome = meta if zarr_format == 2 else meta["attributes"]["ome"]
    ome["multiscales"][0]["coordinateTransformations"] = _scales([10.0, 10.0, 10.0])[0]
    meta_file.write_text(json.dumps(meta))
    assert open_volume(store, settings).voxel_size == (20.0, 5.0, 5.0)
    given = open_volume(store, settings, voxel_size=(1.0, 1.0, 1.0))
    assert given.voxel_size == (1.0, 1.0, 1.0) and given.unit == "micrometer"


def test_ome_zarr_with_a_channel_axis_of_one(tmp_path: Path) -> None:
    axes = [{"name": "c", "type": "channel"}, *SPACE]
    path = _ome(tmp_path / "czyx.zarr", 3, VOLUME[np.newaxis], axes)
    volume = open_volume(LocalStore(path), Settings())
    assert volume.shape == SHAPE and np.array_equal(volume.array[2:4], VOLUME[2:4])


class Counting(LocalStore):
    """A local store that records every read: (key, bytes, first byte asked for)."""

    reads: list[tuple[str, int, int]] = []

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        data = super().get_range(key, start, end)
        Counting.reads.append((key, len(data), start))
        return data

    def get_bytes(self, key: str) -> bytes:
        data = super().get_bytes(key)
        Counting.reads.append((key, len(data), 0))
        return data


def _per_key(reads: list[tuple[str, int, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for key, n, _ in reads:
        total[key] = total.get(key, 0) + n
    return total


def test_a_tiff_stack_is_read_a_slice_at_a_time_and_only_where_asked(tmp_path: Path) -> None:
    big = np.random.default_rng(0).integers(0, 60000, (30, 400, 400)).astype(np.uint16)
    path = _stack(tmp_path / "stack", big)
    slice_bytes = (path / "slice_0001.tif").stat().st_size  # 320 kB each
    Counting.reads = []
    volume = open_volume(Counting(path), Settings(), sample=False)
    # Every slice's header was checked, none of its pixels read.
    headers = _per_key(Counting.reads)
    assert len(headers) == 30 and max(headers.values()) <= 2 * HEADER_BLOCK < slice_bytes / 8

    Counting.reads = []
    part = volume.array[10:12, 50:60, 100:300]
    assert np.array_equal(part, big[10:12, 50:60, 100:300])
    read = _per_key(Counting.reads)
    assert sorted(read) == ["slice_0011.tif", "slice_0012.tif"]  # slices 10 and 11 only
    assert max(read.values()) <= 3 * HEADER_BLOCK  # a header and 10 rows, not 400
    # One slice at a time: all of a slice's reads, then the next one's.
    order = [key for key, _, _ in Counting.reads]
    assert order == sorted(order)

    Counting.reads = []
    volume = open_volume(Counting(path), Settings())  # with the load-time sample
    opened = [key for key, _, start in Counting.reads if start == 0]
    # The header check, then each slice once for all the sample boxes that cross it.
    assert len(opened) == 2 * 30 and len(set(opened)) == 30


class CountingS3(S3Store):
    """An S3 store that adds up the bytes it fetched."""

    fetched = 0

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        data = super().get_range(key, start, end)
        CountingS3.fetched += len(data)
        return data

    def get_bytes(self, key: str) -> bytes:
        data = super().get_bytes(key)
        CountingS3.fetched += len(data)
        return data


@pytest.fixture
def s3(bucket: str, s3_endpoint: str) -> tuple[str, Settings]:
    return bucket, Settings(s3_endpoint_url=s3_endpoint)


def test_hdf5_on_s3_fetches_the_chunks_asked_for(
    s3: tuple[str, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, settings = s3
    data = np.random.default_rng(1).integers(0, 60000, (64, 256, 256)).astype(np.uint16)
    path = _hdf5(tmp_path / "big.h5", {"exchange/data": data}, chunks=(16, 32, 32))
    CountingS3(bucket, "h5", settings).put_file("big.h5", path)
    parent = CountingS3(bucket, "h5", settings)
    # The reader opens the file's folder by URI; let it be this counting store.
    monkeypatch.setattr(readers_base, "open_store", lambda uri, settings: parent)
    volume = open_volume(open_store(f"s3://{bucket}/h5/big.h5", settings), settings, sample=False)
    CountingS3.fetched = 0
    assert np.array_equal(volume.array[16:32, 32:64, 64:96], data[16:32, 32:64, 64:96])
    # The 32 kB chunk and a block of the chunk index: not the 8 MB file.
    assert CountingS3.fetched < 200_000, CountingS3.fetched
    CountingS3.fetched = 0  # a worker's copy opens the file again: its metadata, and the chunk
    assert np.array_equal(
        pickle.loads(pickle.dumps(volume.array))[:16, :32, :32], data[:16, :32, :32]
    )
    assert CountingS3.fetched < 300_000, CountingS3.fetched


def test_tiff_headers_on_s3_are_ranged_reads(s3: tuple[str, Settings], tmp_path: Path) -> None:
    bucket, settings = s3
    big = np.zeros((12, 400, 400), np.uint16)
    assert settings.s3_endpoint_url is not None
    uri = upload_dir(_stack(tmp_path / "stack", big), bucket, "tiffs", settings.s3_endpoint_url)
    store = CountingS3(bucket, "tiffs", settings)
    CountingS3.fetched = 0
    volume = open_volume(store, settings, sample=False)
    assert volume.shape == (12, 400, 400) and uri.endswith("tiffs")
    assert CountingS3.fetched <= 12 * 2 * HEADER_BLOCK, CountingS3.fetched
    CountingS3.fetched = 0
    assert volume.array[5:6, 0:8].shape == (1, 8, 400)
    assert CountingS3.fetched <= 3 * HEADER_BLOCK, CountingS3.fetched


def test_a_sharded_zarr_on_s3_reads_byte_ranges_of_its_shard(s3: tuple[str, Settings]) -> None:
    bucket, settings = s3
    data = np.random.default_rng(2).integers(0, 60000, (64, 64, 64)).astype(np.uint16)
    store = CountingS3(bucket, "sharded.zarr", settings)
    array = zarr.create_array(
        ObjectZarrStore(store),
        shape=data.shape,
        dtype=data.dtype,
        chunks=(16, 16, 16),
        shards=(64, 64, 64),
        config={"write_empty_chunks": True},
    )
    array[...] = data
    shard = store.size("c/0/0/0")
    volume = open_volume(store, settings, sample=False)
    CountingS3.fetched = 0
    assert np.array_equal(volume.array[:16, :16, :16], data[:16, :16, :16])
    assert CountingS3.fetched < shard / 8, (CountingS3.fetched, shard)


def test_ranged_reads_follow_python_slices(where: tuple[str, Settings], tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    blob = bytes(range(256)) * 4
    (tmp_path / "local" / "blob.bin").write_bytes(blob)
    (tmp_path / "local" / "empty.bin").write_bytes(b"")
    store = open_store(_publish(tmp_path / "local", where), where[1])
    for bounds in [(0, 10), (5, None), (-7, None), (1000, 2000), (2000, None), (3, 3), (-10, -2)]:
        assert store.get_range("blob.bin", *bounds) == blob[slice(*bounds)], bounds
    assert store.get_range("empty.bin", 0, 8) == b"" and store.head_bytes("empty.bin", 4) == b""
    assert store.entries() == (["blob.bin", "empty.bin"], [])
    with pytest.raises(MissingInput):
        store.get_range("nope.bin", 0, 4)


# --- bad inputs: one line each, before any voxel is read ---------------------------------------


def _edit_ome(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    change(meta["attributes"]["ome"]["multiscales"][0])
    meta_file.write_text(json.dumps(meta))
    return path


def _level_shape(path: Path) -> Path:
    """Level 1 rewritten at a shape that is no downsampling of level 0."""
    _ome(path, 3)
    zarr.create_array(str(path / "s1"), shape=(12, 10, 4), dtype="u2", overwrite=True)
    return path


def _two_stacks(path: Path) -> Path:
    _stack(path, VOLUME[:4], "proj_{:03d}.tif")
    for i in (1, 2):
        tifffile.imwrite(path / f"flat_{i:03d}.tif", VOLUME[0])
    return path


def _two_hdf5(path: Path) -> Path:
    path.mkdir()
    for name in ("a.h5", "b.h5"):
        _hdf5(path / name, {"exchange/data": VOLUME})
    return path


def _with(path: Path, write: Callable[[Path], object]) -> Path:
    write(path)
    return path


Maker = Callable[[Path], Path]
BAD: dict[str, tuple[Maker, Selection, str]] = {
    "nothing there": (lambda p: p, Selection(), "not a Zarr array, OME-Zarr image, TIFF stack"),
    "tiff: a single 2D image (file)": (
        lambda p: _with(p.with_suffix(".tif"), lambda q: tifffile.imwrite(q, VOLUME[0])),
        Selection(),
        r"a single 2D image \(20, 18\), not a volume",
    ),
    "tiff: a folder of one 2D image": (
        lambda p: _stack(p, VOLUME[:1]),
        Selection(),
        "a single 2D image",
    ),
    "tiff: a gap in the numbering": (
        lambda p: _with(_stack(p, VOLUME[:4]), lambda q: (q / "slice_0003.tif").unlink()),
        Selection(),
        r"a gap in the numbering: slice_0002.tif, then slice_0004.tif \(no slice 3\)",
    ),
    "tiff: slices of different shapes": (
        lambda p: _with(
            _stack(p, VOLUME[:4]), lambda q: tifffile.imwrite(q / "slice_0003.tif", VOLUME[0, 1:])
        ),
        Selection(),
        r"slices differ: slice_0003.tif is \(19, 18\) uint16, slice_0001.tif \(20, 18\)",
    ),
    "tiff: slices of different dtypes": (
        lambda p: _with(
            _stack(p, VOLUME[:4]),
            lambda q: tifffile.imwrite(q / "slice_0002.tif", VOLUME[0].astype(np.float32)),
        ),
        Selection(),
        r"slice_0002.tif is \(20, 18\) float32",
    ),
    "tiff: a multi-page file among slices": (
        lambda p: _with(
            _stack(p, VOLUME[:4]), lambda q: tifffile.imwrite(q / "slice_0004.tif", VOLUME[:6])
        ),
        Selection(),
        "slice_0004.tif holds 6 pages; a stack needs one 2D image per file",
    ),
    "tiff: two series in one folder": (
        _two_stacks,
        Selection(),
        r"not one stack \(flat_\*.tif, proj_\*.tif\)",
    ),
    "tiff: not a TIFF": (
        lambda p: _with(p.with_suffix(".tif"), lambda q: q.write_bytes(b"II*\x00garbage")),
        Selection(),
        "not a readable TIFF",
    ),
    "hdf5: no such dataset": (
        lambda p: _hdf5(p.with_suffix(".h5"), {"entry/data/data": VOLUME, "theta": VOLUME[0, 0]}),
        Selection(),
        r"/exchange/data is no such dataset \(datasets: /entry/data/data 24x20x18, /theta 18\)",
    ),
    "hdf5: dataset= names a group": (
        lambda p: _hdf5(p.with_suffix(".h5"), {"entry/data/data": VOLUME}),
        Selection(dataset="entry/data"),
        "/entry/data is a group, not a dataset",
    ),
    "hdf5: a 2D dataset": (
        lambda p: _hdf5(p.with_suffix(".h5"), {"exchange/data": VOLUME[0]}),
        Selection(),
        r"h5:/exchange/data: expected a 3D volume, got shape \(20, 18\)",
    ),
    "hdf5: not an HDF5 file": (
        lambda p: _with(p.with_suffix(".h5"), lambda q: q.write_bytes(b"\x89HDF" * 64)),
        Selection(),
        "not a readable HDF5 file",
    ),
    "hdf5: two files in the folder": (
        _two_hdf5,
        Selection(),
        r"holds 2 HDF5 files \(a.h5, b.h5\); name one",
    ),
    "zarr group: two 3D arrays": (
        lambda p: _with(
            _zarr_group(p, 3),
            lambda q: zarr.open_group(str(q)).create_array("mask", shape=SHAPE, dtype="u1"),
        ),
        Selection(),
        r"a Zarr group with 2 3D arrays \(mask, scan/raw\); name one with --param array=NAME",
    ),
    "zarr group: no such array": (
        lambda p: _zarr_group(p, 2),
        Selection(array="nope"),
        r"no array 'nope' in the group \(3D arrays: density\)",
    ),
    "zarr group: only a 2D array": (
        lambda p: _with(
            p, lambda q: zarr.open_group(str(q)).create_array("a", shape=(4, 4), dtype="u1")
        ),
        Selection(),
        r"is a Zarr group, not an array, and holds no 3D array \(a \(2D\)\)",
    ),
    "zarr array given array=": (
        lambda p: _zarr_array(p, 3),
        Selection(array="x"),
        "is a Zarr array, not a group: array=x names nothing in it",
    ),
    "ome-zarr: a missing level": (
        lambda p: _with(_ome(p, 3), lambda q: shutil.rmtree(q / "s1")),
        Selection(),
        r"OME-Zarr levels disagree: level 1's dataset 's1' is missing",
    ),
    "ome-zarr: a level of the wrong shape": (
        _level_shape,
        Selection(),
        r"levels disagree: level 1 \(s1\) has shape \(12, 10, 4\), not level 0's \(24, 20, 18\)",
    ),
    "ome-zarr: a level finer than the one before": (
        lambda p: _edit_ome(
            _ome(p, 3),
            lambda m: m["datasets"][1].update(coordinateTransformations=_scales([1, 1, 0.1])[0]),
        ),
        Selection(),
        r"level 1 \(s1\) has scale \[1.0, 1.0, 0.1\], finer than level 0's",
    ),
    "ome-zarr: no such level": (
        lambda p: _ome(p, 2),
        Selection(level=5),
        r"no level 5 \(the image has 2: 0..1\)",
    ),
    "ome-zarr: three channels": (
        lambda p: _ome(p, 3, np.stack([VOLUME] * 3), [{"name": "c", "type": "channel"}, *SPACE]),
        Selection(),
        "a volume per c=3; the pipeline reads one 3D volume",
    ),
    "ome-zarr: different units": (
        lambda p: _edit_ome(_ome(p, 3), lambda m: m["axes"][0].update(unit="millimeter")),
        Selection(),
        r"space axes have different units \(z=millimeter, y=micrometer, x=micrometer\)",
    ),
    "level= for a TIFF stack": (
        lambda p: _stack(p, VOLUME[:4]),
        Selection(level=1),
        "level= picks an OME-Zarr resolution level; this input is TIFF",
    ),
    "dataset= for a Zarr array": (
        lambda p: _zarr_array(p, 2),
        Selection(dataset="a"),
        "dataset= picks an HDF5 dataset; this input is Zarr",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_fail_with_one_line(case: str, tmp_path: Path) -> None:
    make, selection, needle = BAD[case]
    path = make(tmp_path / "in")
    with pytest.raises(InvalidInput, match=needle) as info:
        open_volume(LocalStore(path), Settings(), sample=False, selection=selection)
    assert "\n" not in str(info.value) and str(path) in str(info.value), str(info.value)


def test_a_missing_hdf5_file_is_missing_input(tmp_path: Path) -> None:
    with pytest.raises(MissingInput, match=r"nope\.h5"):
        open_volume(LocalStore(tmp_path / "nope.h5"), Settings())
