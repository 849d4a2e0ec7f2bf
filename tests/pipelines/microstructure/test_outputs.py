"""What the microstructure pipeline hands over (#19): an OME-Zarr 0.5 that ome-zarr-models
validates and tensorstore reads as zarr-python does, a label image of the fibers alone (1..N, as
a serial scipy label + size filter + renumbering would make it), and a per-fiber table that
matches a brute-force computation on the label image and the known fibers of a phantom."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from scipy import ndimage

from consumers.pipelines.microstructure import fiberstats, fibertable, ngff, relabel
from consumers.pipelines.microstructure import pipeline as microstructure
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from producer.synth.fibers import PhantomSpec, write_phantom
from shared.settings import Settings
from shared.store import LocalStore
from tests.pipelines.microstructure.test_pipeline import Run, run_job

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")


def _output(run: Run) -> Path:
    return Path(run.ctx.out.uri) / microstructure.OUTPUT


def _read(group: zarr.Group, name: str) -> np.ndarray:
    return np.asarray(zarr.open_array(group.store, path=f"{group.path}/{name}".lstrip("/"))[:])


def _stats(run: Run) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(run.result.uploads["stats.json"].read_text())
    return loaded


def _table(run: Run) -> dict[str, np.ndarray]:
    with run.result.uploads[fibertable.FILE].open() as handle:
        rows = list(csv.DictReader(handle))
    return {name: np.array([float(r[name]) for r in rows]) for name in fibertable.COLUMNS}


def serial_fibers(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """The reference: scipy on the whole mask, components under ``min_voxels`` dropped, the
    rest renumbered 1..N in scipy's own order (that of their first voxel in C order)."""
    components, _ = ndimage.label(mask)
    keep = np.bincount(components.ravel()) >= min_voxels
    keep[0] = False
    table = np.zeros(keep.size, dtype=np.uint32)
    table[keep] = np.arange(1, int(keep.sum()) + 1)
    out: np.ndarray = table[components]
    return out


# --- a phantom of touching fibers in noise, in 2x2x2 chunks --------------------------------


@pytest.fixture(scope="module")
def touching(dask_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("touching")
    spec = PhantomSpec(shape=(64, 96, 96), volume_fraction=0.5, gap=0.0, seed=4)
    write_phantom(str(root / "vol.zarr"), spec, Settings())
    return run_job(dask_client, root / "vol.zarr", root / "out", {"chunk_shape": [32, 48, 48]})


def test_every_output_group_validates_as_ome_zarr_0_5(touching: Run) -> None:
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    path = _output(touching)
    image = open_ome_zarr(str(path), version="0.5")
    assert isinstance(image, Image)  # validating the image validates its labels group too
    assert isinstance(open_ome_zarr(str(path / "labels"), version="0.5"), Labels)
    fibers = open_ome_zarr(str(path / "labels/fibers"), version="0.5")
    assert isinstance(fibers, ImageLabel)

    image_ms = image.ome_attributes.multiscales[0]
    assert image_ms.type == "local_mean" and "downsample_mean" in str(image_ms.metadata)
    label_attrs = fibers.ome_attributes
    assert label_attrs.multiscales[0].type == "nearest"
    assert len(label_attrs.multiscales[0].datasets) == len(image_ms.datasets)
    n = _stats(touching)["statistics"]["fibers"]
    label = label_attrs.image_label
    assert label is not None and label.colors is not None and label.properties is not None
    assert [c.label_value for c in label.colors] == list(range(1, n + 1))
    assert len({c.rgba for c in label.colors}) == n  # distinct colours
    table = _table(touching)
    voxels = [p.model_dump()["voxels"] for p in label.properties]
    np.testing.assert_array_equal(voxels, table["voxels"])


def test_the_phantom_writer_writes_plain_zarr_or_valid_ome_zarr(tmp_path: Path) -> None:
    # Today the phantom is a bare Zarr v3 array (the pipeline's input), not OME-Zarr; should
    # it become one, it must validate.
    from ome_zarr_models import open_ome_zarr

    write_phantom(
        str(tmp_path / "p.zarr"),
        PhantomSpec(shape=(32, 32, 32), radius=(2.0, 3.0), seed=1),
        Settings(),
    )
    for path in (tmp_path / "p.zarr", tmp_path / "_truth" / "p.zarr"):
        meta = json.loads((path / "zarr.json").read_text())
        if "ome" in meta.get("attributes", {}):
            open_ome_zarr(str(path), version="0.5")
        else:
            assert meta["node_type"] == "array"


def test_tensorstore_reads_what_zarr_python_reads(touching: Run) -> None:
    import tensorstore as ts

    path = _output(touching)
    root = zarr.open_group(str(path), mode="r")
    arrays = ["s0", *(f"labels/fibers/{lv['path']}" for lv in touching.result.summary["levels"])]
    for name in arrays:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}}
        theirs = ts.open(spec, read=True).result().read().result()
        ours = _read(root, name)
        assert theirs.dtype == ours.dtype and theirs.shape == ours.shape
        np.testing.assert_array_equal(theirs, ours)


def test_the_label_image_holds_the_counted_fibers_numbered_1_to_n(touching: Run) -> None:
    stats = _stats(touching)["statistics"]
    n, min_voxels = stats["fibers"], stats["min_fiber_voxels"]
    labels = _read(touching.root, "labels/fibers/s0")
    assert stats["components"] > 3 * n  # noise specks: the filter has work to do
    assert int(labels.max()) == n and n > 10
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    assert (sizes[1:] >= min_voxels).all()  # every label 1..N present, none a speck
    # The same as scipy on the whole mask (the objectness written beside it, same threshold).
    mask = _read(touching.root, "s0") > touching.result.summary["threshold"]["value"]
    np.testing.assert_array_equal(labels, serial_fibers(mask, min_voxels))
    # Every pyramid level is subsampled from the renumbered level 0.
    for level in touching.result.summary["levels"][1:]:
        step = [a // b for a, b in zip(labels.shape, level["shape"], strict=True)]
        coarse = _read(touching.root, f"labels/fibers/{level['path']}")
        np.testing.assert_array_equal(coarse, labels[:: step[0], :: step[1], :: step[2]])
    # The statistics describe these labels.
    assert stats["fiber_voxels"] == int(sizes[1:].sum()) < stats["segmented_voxels"]
    assert stats["volume_fraction"] == pytest.approx(sizes[1:].sum() / labels.size, abs=1e-6)
    table = _table(touching)
    np.testing.assert_array_equal(table["label"], np.arange(1, n + 1))
    np.testing.assert_array_equal(table["voxels"], sizes[1:])
    assert stats["fiber_table"]["rows"] == n


# --- known straight fibers: the table against brute force and against the truth -----------


@dataclass(frozen=True)
class Rod:
    centre: tuple[float, float, float]  # z, y, x (voxels)
    direction: tuple[float, float, float]
    length: float  # voxels
    radius: float


RODS = (
    Rod((24, 16, 16), (1, 0, 0), 36, 3.0),  # along z
    Rod((24, 46, 40), (math.cos(math.radians(30)), 0, math.sin(math.radians(30))), 30, 2.5),
    Rod((10, 46, 16), (0, 1, 1), 28, 2.5),  # in a plane of constant z
    Rod((30, 20, 50), (1, 0.5, -0.5), 24, 2.0),
)
VOXEL = 0.5  # micrometres


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def render_rods(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A micro-CT-like volume of the rods (flat-ended cylinders) and their masks (0, 1..)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    truth = np.zeros(shape, dtype=np.uint8)
    for k, rod in enumerate(RODS, start=1):
        rel = grid - np.asarray(rod.centre)
        along = rel @ _unit(rod.direction)
        across = np.linalg.norm(rel - along[..., None] * _unit(rod.direction), axis=-1)
        truth[(np.abs(along) <= rod.length / 2) & (across <= rod.radius)] = k
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(10_000 + 16_000 * (truth > 0).astype(np.float64), 0.7)
    image += rng.normal(0, 2000, shape)  # the fiber phantom's contrast-to-noise, 8
    return np.clip(image, 0, 65535).astype(np.uint16), truth


@pytest.fixture(scope="module")
def rods(dask_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("rods")
    volume, _ = render_rods((48, 64, 64))
    array = zarr.create_array(
        str(root / "rods.zarr"), shape=volume.shape, dtype=volume.dtype, zarr_format=3
    )
    array[...] = volume
    array.attrs.update({"voxel_size": [VOXEL] * 3, "unit": "micrometer"})
    # Noise at this contrast-to-noise leaves a few tube-like specks of ~100 voxels; the rods
    # have 490 or more.
    params = {"qc": False, "min_fiber_voxels": 250}
    return run_job(dask_client, root / "rods.zarr", root / "out", params)


def brute_force(labels: np.ndarray, voxel_size: tuple[float, float, float]) -> dict[str, Any]:
    """Per label, straight from its voxels' coordinates: numpy, no moments."""
    scale = np.asarray(voxel_size)
    out: dict[str, list[Any]] = {"centroid": [], "direction": [], "length": [], "diameter": []}
    for k in range(1, int(labels.max()) + 1):
        points = np.argwhere(labels == k) * scale
        evals, evecs = np.linalg.eigh(np.cov(points.T, bias=True))
        d = evecs[:, 2] * np.sign(evecs[np.flatnonzero(evecs[:, 2])[0], 2])
        length = math.sqrt(12 * evals[2] + float((d**2 * scale**2).sum()))
        volume = len(points) * math.prod(voxel_size)
        out["centroid"].append(points.mean(axis=0))
        out["direction"].append(d)
        out["length"].append(length)
        out["diameter"].append(2 * math.sqrt(volume / (math.pi * length)))
    return {name: np.asarray(values) for name, values in out.items()}


def test_the_fiber_table_is_the_brute_force_geometry_of_the_labels(rods: Run) -> None:
    table = _table(rods)
    labels = _read(rods.root, "labels/fibers/s0")
    assert int(labels.max()) == len(RODS) == len(table["label"])
    expected = brute_force(labels, (VOXEL,) * 3)
    centroid = np.column_stack([table[f"centroid_{a}"] for a in "zyx"])
    direction = np.column_stack([table[f"direction_{a}"] for a in "zyx"])
    np.testing.assert_allclose(centroid, expected["centroid"], rtol=1e-6)
    # Parallel (the sign of an axis with z ~ 0 is rounding's choice).
    np.testing.assert_allclose(np.abs((direction * expected["direction"]).sum(1)), 1, atol=1e-9)
    np.testing.assert_allclose(table["length"], expected["length"], rtol=1e-6)
    np.testing.assert_allclose(table["diameter"], expected["diameter"], rtol=1e-6)
    np.testing.assert_allclose(table["volume"], table["voxels"] * VOXEL**3, rtol=1e-6)
    assert _stats(rods)["statistics"]["fiber_table"]["unit"] == "micrometer"


def _check_rods(
    table: dict[str, np.ndarray], voxel: float, angle_deg: float, length: float, diameter: float
) -> None:
    # Labels follow the first voxel in C order; match each rod by its centre instead.
    centroid = np.column_stack([table[f"centroid_{a}"] for a in "zyx"]) / voxel
    assert len(centroid) == len(RODS)
    for rod in RODS:
        k = int(np.argmin(np.linalg.norm(centroid - np.asarray(rod.centre), axis=1)))
        assert np.linalg.norm(centroid[k] - rod.centre) < 0.5
        d = np.array([table[f"direction_{a}"][k] for a in "zyx"])
        angle = math.degrees(math.acos(min(1.0, abs(float(d @ _unit(rod.direction))))))
        assert angle < angle_deg, (rod, angle)
        assert table["length"][k] == pytest.approx(rod.length * voxel, rel=length)
        assert table["diameter"][k] == pytest.approx(2 * rod.radius * voxel, rel=diameter)


def test_the_table_of_ideal_rods_is_their_geometry() -> None:
    # The estimators alone, on the rods' own voxels, in physical units (then anisotropic).
    _, truth = render_rods((48, 64, 64))
    voxel_size = (0.5, 0.5, 0.5)
    moments = fiberstats.merge_moments([fiberstats.block_moments(truth, (0, 0, 0))], len(RODS))
    rows = fibertable.table(moments[1:], voxel_size)
    _check_rods(dict(zip(fibertable.COLUMNS, rows.T, strict=True)), 0.5, 0.5, 0.04, 0.06)
    stretched = fibertable.table(moments[1:], (2.0, 0.5, 0.5))  # z voxels 4x as long
    along_z = stretched[0]  # rod 1 lies along z: 37 planes of 2 um
    assert along_z[9] == pytest.approx(37 * 2.0) and along_z[6] == pytest.approx(1.0)


def test_the_fiber_table_recovers_the_known_rods(rods: Run) -> None:
    table = _table(rods)
    # The segmentation runs about a voxel past each flat end (the Hessian's smoothing) and
    # thickens the thinnest rod (2 voxels of radius) by a fifth.
    _check_rods(table, VOXEL, 2.0, 0.15, 0.25)
    # Four rods in four directions: the orientation tensor is far from a single direction.
    orientation = _stats(rods)["statistics"]["orientation"]
    tensor = np.asarray(orientation["tensor_zyx"])
    weights = table["voxels"] / table["voxels"].sum()
    directions = np.column_stack([table[f"direction_{a}"] for a in "zyx"])
    np.testing.assert_allclose(
        tensor, np.einsum("k,ki,kj->ij", weights, directions, directions), atol=1e-5
    )
    assert sum(orientation["tensor_eigenvalues"]) == pytest.approx(1.0, abs=1e-5)
    assert orientation["tensor_eigenvalues"][0] < 0.8


# --- the building blocks, without a cluster ------------------------------------------------


def test_block_moments_relabel_blocks_as_scipy_does_the_whole_mask() -> None:
    rng = np.random.default_rng(11)
    mask = ndimage.gaussian_filter(rng.normal(size=(30, 34, 38)), 1.2) > 0.12
    whole, count = ndimage.label(mask)
    # Components numbered in some other order than scipy's, as a chunked labelling does.
    shuffled = np.concatenate([[0], rng.permutation(count) + 1]).astype(np.uint32)[whole]
    edges = [(0, 11, 30), (0, 20, 34), (0, 9, 25, 38)]
    blocks = {}
    for i in range(2):
        for j in range(2):
            for k in range(3):
                where = tuple(slice(e[a], e[a + 1]) for e, a in zip(edges, (i, j, k), strict=True))
                blocks[(i, j, k)] = where
    rows = [
        fiberstats.block_moments(shuffled[w], (w[0].start, w[1].start, w[2].start), shuffled.shape)
        for w in blocks.values()
    ]
    moments = fiberstats.merge_moments(rows, count)
    # The merged moments are the whole volume's, block borders or not.
    np.testing.assert_array_equal(
        moments[:, : fiberstats.N_MOMENTS],
        fiberstats.merge_moments([fiberstats.block_moments(shuffled, (0, 0, 0))], count)[
            :, : fiberstats.N_MOMENTS
        ],
    )
    min_voxels = 20
    table = relabel.lookup(moments, min_voxels)
    out = np.zeros_like(shuffled)
    for w in blocks.values():
        out[w] = relabel.apply(shuffled[w], table)
    expected = serial_fibers(mask, min_voxels)
    assert 3 < expected.max() < count  # some kept, some dropped
    np.testing.assert_array_equal(out, expected)
    fibers = relabel.renumber(moments, table)
    np.testing.assert_array_equal(fibers[:, 0], np.bincount(expected.ravel())[1:])


@pytest.mark.parametrize("fibers", [0, 3, 12, 30])
def test_label_colours_are_all_or_none_and_always_valid(
    fibers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ome_zarr_models import open_ome_zarr

    # Small limits for a small test: properties up to 10 fibers, colours up to 20.
    monkeypatch.setattr(ngff, "MAX_DESCRIBED_LABELS", 10)
    monkeypatch.setattr(ngff, "MAX_COLORED_LABELS", 20)
    moments = np.zeros((fibers, fiberstats.N_MOMENTS + 1))
    moments[:, 0] = 1  # one-voxel fibers: enough to describe
    rows = fibertable.table(moments, (1.0, 1.0, 1.0))
    levels = ngff.pyramid((40, 40, 40), (1.0, 1.0, 1.0))
    where = ngff.Where((40, 40, 40), (1.0, 1.0, 1.0), None)
    store = ObjectZarrStore(LocalStore(tmp_path / "out.ome.zarr"))
    root, _ = ngff.create_image(store, levels, np.float32, "objectness", where)
    ngff.create_labels(
        root,
        levels,
        np.uint32,
        "fibers",
        where,
        count=fibers,
        properties=fibertable.properties(rows),
    )
    open_ome_zarr(str(tmp_path / "out.ome.zarr"), version="0.5")  # the image and its labels
    attrs = json.loads((tmp_path / "out.ome.zarr/labels/fibers/zarr.json").read_text())
    image_label = attrs["attributes"]["ome"]["image-label"]
    colors = [c["label-value"] for c in image_label["colors"]]
    assert colors == (list(range(1, fibers + 1)) if fibers <= 20 else [])
    assert ("properties" in image_label) == (0 < fibers <= 10)
    assert fibertable.write(tmp_path / "fibers.csv", rows).read_text().count("\n") == fibers + 1
