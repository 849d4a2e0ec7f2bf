"""Campaign discovery of micro-CT volumes (``shared.volumes``): each volume once whatever its
format, from a local folder and from the S3 test server, without looking inside a volume."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from producer.inputs import input_rows
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.store import LocalStore, ObjectStore, open_store
from shared.volumes import discover_volumes, tiff_page_count, tiff_series
from tests.integration.harness import upload_dir

SLICE = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
VOLUME = np.stack([SLICE] * 6)


def _zarr_v3(folder: Path, chunks: int = 3) -> None:
    folder.mkdir(parents=True)
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "array"}))
    for i in range(chunks):  # discovery never lists these
        (folder / "c" / "0" / "0").mkdir(parents=True, exist_ok=True)
        (folder / "c" / "0" / "0" / str(i)).write_bytes(b"x")


def _dataset(root: Path) -> Path:
    """Every format, and the things discovery must leave out or report."""
    _zarr_v3(root / "a.zarr")
    (root / "b_v2.zarr").mkdir()
    (root / "b_v2.zarr" / ".zarray").write_text("{}")
    for i in range(3):
        (root / "b_v2.zarr" / f"0.0.{i}").write_bytes(b"x")
    (root / "ome.zarr").mkdir()
    (root / "ome.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    _zarr_v3(root / "ome.zarr" / "s0")
    _zarr_v3(root / "ome.zarr" / "s1")
    (root / "xr.zarr" / "data").mkdir(parents=True)
    (root / "xr.zarr" / ".zgroup").write_text("{}")
    (root / "xr.zarr" / "data" / ".zarray").write_text("{}")
    (root / "stack").mkdir()
    for i in range(1, 6):
        tifffile.imwrite(root / "stack" / f"slice_{i:04d}.tif", SLICE)
    (root / "volumes").mkdir()
    for i in (1, 2):  # numbered, but each a volume: its first page is not its last
        tifffile.imwrite(root / "volumes" / f"scan{i}.tif", VOLUME)
    tifffile.imwrite(root / "scan.tiff", VOLUME)
    (root / "data.h5").write_bytes(b"\x89HDF")
    (root / "run.nxs").write_bytes(b"\x89HDF")
    (root / "notes.txt").write_text("not an input")
    _zarr_v3(root / "nested" / "deeper" / "c.zarr")
    _zarr_v3(root / "_truth" / "a.zarr")  # the phantom's ground truth: never an input
    _zarr_v3(root / ".hidden" / "x.zarr")
    (root / "lone").mkdir()
    tifffile.imwrite(root / "lone" / "preview.tif", SLICE)
    (root / "mixed").mkdir()
    for stem in ("proj_", "flat_"):
        for i in (1, 2):
            tifffile.imwrite(root / "mixed" / f"{stem}{i}.tif", SLICE)
    return root


EXPECTED = {
    "a.zarr": "",
    "b_v2.zarr": "",
    "data.h5": "",
    "lone": "a single 2D image",
    "mixed": "TIFF slices that are not one stack (flat_*.tif, proj_*.tif)",
    "nested/deeper/c.zarr": "",
    "ome.zarr": "",
    "run.nxs": "",
    "scan.tiff": "",
    "stack": "",
    "volumes/scan1.tif": "",
    "volumes/scan2.tif": "",
    "xr.zarr": "",
}


class Watched(LocalStore):
    """A local store that records which folders were listed."""

    listed: list[str] = []

    def entries(self, prefix: str = "") -> tuple[list[str], list[str]]:
        Watched.listed.append(prefix)
        return super().entries(prefix)


def _found(store: ObjectStore, root: str) -> dict[str, str]:
    return {
        f.input_uri.removeprefix(root.rstrip("/") + "/"): f.problem
        for f in discover_volumes(store, root)
    }


def test_each_volume_is_found_once_locally(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ct")
    Watched.listed = []
    found = _found(Watched(root), str(root))
    assert {k: v[:60] for k, v in found.items()}.keys() == EXPECTED.keys()
    for key, problem in EXPECTED.items():
        assert problem in found[key], (key, found[key])
    # A volume is recognised by its marker and never listed: not the chunks of an array, the
    # levels of an OME-Zarr image or a phantom's truth.
    assert not [p for p in Watched.listed if ".zarr" in p or p.startswith(("_", "."))]


def test_each_volume_is_found_once_on_s3(tmp_path: Path, bucket: str, s3_endpoint: str) -> None:
    uri = upload_dir(_dataset(tmp_path / "ct"), bucket, "campaign/ct", s3_endpoint)
    found = _found(open_store(uri, Settings(s3_endpoint_url=s3_endpoint)), uri)
    assert found.keys() == EXPECTED.keys()
    assert all(problem in found[key] for key, problem in EXPECTED.items())


def test_a_campaign_listing_enqueues_the_volumes(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ct")
    inputs = input_rows(str(root), "microstructure", Settings())
    rows = {r.input_uri.removeprefix(f"{root}/"): r for r in inputs.rows}
    assert rows.keys() == EXPECTED.keys()
    assert rows["stack"].subject == "stack" and rows["data.h5"].subject == "data.h5"
    # --marker keeps its meaning: only the folders holding that file.
    marked = input_rows(str(root), "microstructure", Settings(), marker=".zarray")
    assert [r.input_uri for r in marked.rows] == [f"{root}/b_v2.zarr"]
    (tmp_path / "flat").mkdir()
    tifffile.imwrite(tmp_path / "flat" / "one.tif", SLICE)
    with pytest.raises(InvalidInput, match=r"nothing usable below .*a single 2D image"):
        input_rows(str(tmp_path / "flat"), "microstructure", Settings())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"no inputs below .*TIFF stack"):
        input_rows(str(tmp_path / "empty"), "microstructure", Settings())


def test_the_listed_prefix_may_be_a_volume_itself(tmp_path: Path) -> None:
    _zarr_v3(tmp_path / "one.zarr")
    found = discover_volumes(LocalStore(tmp_path / "one.zarr"), str(tmp_path / "one.zarr"))
    assert [(f.input_uri, f.subject) for f in found] == [(str(tmp_path / "one.zarr"), "one.zarr")]


def test_slices_are_in_natural_order_and_gaps_are_named() -> None:
    names = ["s_10.tif", "s_9.tif", "s_11.TIF", "notes.txt", "overview.tif", "t_1.tiff"]
    series, plain = tiff_series(names)
    assert [(s.pattern, s.names) for s in series] == [
        ("s_*.tif", ("s_9.tif", "s_10.tif", "s_11.TIF")),
        ("t_*.tiff", ("t_1.tiff",)),
    ]
    assert plain == ["overview.tif"]
    assert series[0].problem() == ""
    gap = tiff_series(["0001.tif", "0002.tif", "0004.tif"])[0][0]
    assert gap.problem() == "a gap in the numbering: 0002.tif, then 0004.tif (no slice 3)"
    twice = tiff_series(["a1.tif", "a01.tif"])[0][0]
    assert "have the same number" in twice.problem()


@pytest.mark.parametrize("options", [{}, {"bigtiff": True}, {"byteorder": ">"}])
def test_page_count_from_the_header(tmp_path: Path, options: dict[str, object]) -> None:
    tifffile.imwrite(tmp_path / "slice.tif", SLICE, **options)  # type: ignore[arg-type]
    tifffile.imwrite(tmp_path / "volume.tif", VOLUME, **options)  # type: ignore[arg-type]
    store = LocalStore(tmp_path)
    assert tiff_page_count(store, "slice.tif") == 1
    assert tiff_page_count(store, "volume.tif") == 2


def test_page_count_follows_a_directory_at_the_end(tmp_path: Path) -> None:
    """libtiff and ImageJ write the directory after the pixels: one more ranged read."""
    far = 200_000
    for pages, name in ((1, "one.tif"), (2, "two.tif")):
        entry = struct.pack("<HHII", 256, 3, 1, 10)  # ImageWidth = 10
        ifd = struct.pack("<H", 1) + entry + struct.pack("<I", 0 if pages == 1 else 8)
        (tmp_path / name).write_bytes(b"II*\x00" + struct.pack("<I", far) + bytes(far - 8) + ifd)
    store = LocalStore(tmp_path)
    assert tiff_page_count(store, "one.tif") == 1 and tiff_page_count(store, "two.tif") == 2
    (tmp_path / "no.tif").write_bytes(b"not a tiff at all")
    assert tiff_page_count(store, "no.tif") is None
