"""The microstructure pipeline on real Dask workers against ITK on the whole volume, the
phantom's ground truth, and ome-zarr-py; plus its validation catalogue and its building blocks
(chunk plans, pyramids, Otsu, noise, orientation)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from scipy import ndimage

from consumers.pipelines import PIPELINES
from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.microstructure import fiberstats, ngff
from consumers.pipelines.microstructure import pipeline as microstructure
from consumers.pipelines.microstructure.chunking import STORAGE_CHUNK, plan_chunks
from consumers.pipelines.microstructure.objectness import ObjectnessSpec
from consumers.pipelines.microstructure.objectness_itk import objectness, objectness_whole
from producer.synth.fibers import Fiber, PhantomSpec, render_slab, truth_uri, write_phantom
from shared.errors import InvalidInput
from shared.jobspec import JobSpec
from shared.params import MicrostructureParams
from shared.settings import Settings
from shared.store import LocalStore
from shared.timing import StageTimer

# ITK's SWIG wrappers trip a Python 3.12-era DeprecationWarning on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")


def make_ctx(
    volume_dir: Path, out: Path, params: dict[str, Any] | None = None, **settings: Any
) -> PipelineContext:
    return PipelineContext(
        spec=JobSpec(
            pipeline="microstructure",
            input_uri=str(volume_dir),
            results_uri=str(out),
            params=params or {},
        ),
        inputs=LocalStore(volume_dir),
        out=LocalStore(out / "attempt"),
        timer=StageTimer(),
        settings=Settings(**settings),
        workdir=out / "work",
    )


@dataclass
class Run:
    ctx: PipelineContext
    loaded: microstructure.Loaded
    result: PipelineResult
    volume: np.ndarray
    truth: np.ndarray

    @property
    def root(self) -> zarr.Group:
        return zarr.open_group(str(self.ctx.out.uri) + f"/{microstructure.OUTPUT}", mode="r")


def run_job(client: Any, volume_dir: Path, out: Path, params: dict[str, Any] | None = None) -> Run:
    ctx = make_ctx(volume_dir, out, params)
    loaded = microstructure.load(ctx)
    result = microstructure.run(ctx, loaded, client)
    volume = zarr.open_array(str(volume_dir), mode="r")[:]
    truth_dir = Path(truth_uri(str(volume_dir)))
    truth = zarr.open_array(str(truth_dir), mode="r")[:] if truth_dir.exists() else None
    return Run(ctx, loaded, result, volume, truth)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(str(root / "vol.zarr"), PhantomSpec(shape=(96, 96, 96), seed=1), Settings())
    return root / "vol.zarr"


@pytest.fixture(scope="module")
def chunked(dask_client: Any, phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Default parameters, but 2x2x2 compute chunks (the planner keeps 96^3 in one)."""
    return run_job(
        dask_client, phantom_dir, tmp_path_factory.mktemp("out"), {"chunk_shape": [48, 48, 48]}
    )


@pytest.fixture(scope="module")
def whole(chunked: Run) -> np.ndarray:
    """ITK on the whole volume in one call (its Hessian filter), same parameters (gamma from
    the same sample)."""
    return objectness_whole(chunked.volume, chunked.loaded.spec)


def test_chunked_objectness_equals_whole_volume_itk(chunked: Run, whole: np.ndarray) -> None:
    plan = chunked.result.summary["chunking"]
    assert plan["grid"] == [2, 2, 2] and plan["halo"] == 18
    ours = chunked.root["s0"][:]
    halo = plan["halo"]
    interior = (slice(halo, -halo),) * 3
    scale = float(np.abs(whole).max())
    assert scale > 0.5  # fibers respond
    assert np.abs(ours - whole)[interior].max() / scale <= 1e-4
    # boundary="none" leaves ITK its own border handling: equal at the faces too.
    assert np.abs(ours - whole).max() / scale <= 1e-4


def test_segmentation_and_components_equal_the_whole_volume_ones(
    chunked: Run, whole: np.ndarray
) -> None:
    threshold = chunked.result.summary["threshold"]["value"]
    ours = chunked.root["labels/fibers/s0"][:]
    theirs, count = ndimage.label(whole > threshold)
    assert chunked.result.summary["components"] == count
    # The label image holds the fibers alone, numbered in scipy's order (see relabel.py).
    fibers = np.bincount(theirs.ravel()) >= MicrostructureParams().min_fiber_voxels
    fibers[0] = False
    renumber = np.zeros(count + 1, np.uint32)
    renumber[fibers] = np.arange(1, fibers.sum() + 1)
    np.testing.assert_array_equal(ours, renumber[theirs])
    assert chunked.result.summary["fibers"] == fibers.sum() < count


def test_default_parameters_recover_the_phantom(chunked: Run) -> None:
    seg = chunked.root["labels/fibers/s0"][:] > 0
    truth = chunked.truth.astype(bool)
    dice = 2 * np.count_nonzero(seg & truth) / (np.count_nonzero(seg) + np.count_nonzero(truth))
    assert dice >= 0.94  # 0.93 before the specks below min_fiber_voxels left the labels
    # The fibers' fraction (what the labels hold) runs ~0.027 under the truth: the threshold
    # trims the fibers' edges; the specks, which made up for it, count no more.
    assert abs(chunked.result.summary["volume_fraction"] - truth.mean()) <= 0.03
    orientation = chunked.result.summary["orientation"]
    assert orientation["angle_from_z_deg"] < 6  # the phantom's fibers lean 3 degrees


def test_summary_timing_and_stats_file(chunked: Run) -> None:
    summary = chunked.result.summary
    assert summary["threshold"] == {"value": 0.1, "method": "given"}
    assert summary["gamma"]["method"] == "0.6 x noise"
    assert 1500 < summary["gamma"]["noise"] < 2500  # the phantom's noise is 2000
    assert len(summary["gamma"]["sample"]["boxes_zyx"]) == 8
    assert summary["chunking"]["halo_overhead"] == pytest.approx((132 / 96) ** 3 - 1, abs=1e-6)
    stages = chunked.ctx.timer.as_dict()["stages_s"]
    for stage in ("load", "objectness", "threshold", "label", "stats", "write", "qc"):
        assert stage in stages
    busy = chunked.ctx.timer.extra["objectness_workers_busy_s"]
    assert len(busy) == 2 and all(v > 0 for v in busy.values())
    stats = json.loads(chunked.result.uploads["stats.json"].read_text())
    hist = stats["statistics"]["size_histogram_voxels"]
    assert sum(hist["counts"]) == summary["components"]
    assert chunked.result.uploads["qc/fibers.png"].read_bytes().startswith(b"\x89PNG")


def test_output_opens_with_ome_zarr_py(chunked: Run) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    path = Path(chunked.ctx.out.uri) / microstructure.OUTPUT
    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    assert [d.shape for d in image.data] == [(96, 96, 96), (48, 48, 48), (24, 24, 24)]
    transforms = image.metadata["coordinateTransformations"]
    assert transforms[1][0] == {"type": "scale", "scale": [2.0, 2.0, 2.0]}
    assert transforms[1][1] == {"type": "translation", "translation": [0.5, 0.5, 0.5]}
    assert [a["unit"] for a in image.metadata["axes"]] == ["micrometer"] * 3
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1 and labels[0].data[0].shape == (96, 96, 96)
    level0 = np.asarray(image.data[0])
    level1 = np.asarray(image.data[1])
    np.testing.assert_allclose(level1, level0.reshape(48, 2, 48, 2, 48, 2).mean((1, 3, 5)), 1e-6)
    lab = np.asarray(labels[0].data[0])
    np.testing.assert_array_equal(np.asarray(labels[0].data[1]), lab[::2, ::2, ::2])


def test_every_written_object_is_listed_with_its_checksum(chunked: Run) -> None:
    listed = {f.key: f for f in chunked.result.files}
    on_disk = {k for k in chunked.ctx.out.list(microstructure.OUTPUT)}
    assert set(listed) == on_disk
    for key in list(on_disk)[::7]:
        data = chunked.ctx.out.get_bytes(key)
        assert listed[key].bytes == len(data)
        assert listed[key].sha256 == hashlib.sha256(data).hexdigest()
    # One storage chunk per object: 2x2x2 chunks of 48 -> 2x2x2 objects of 48 at level 0.
    assert chunked.root["s0"].chunks == (48, 48, 48)
    assert sum(1 for k in on_disk if k.startswith(f"{microstructure.OUTPUT}/s0/c/")) == 8


def test_a_chunk_entirely_inside_a_fiber_stays_fiber(dask_client: Any, tmp_path: Path) -> None:
    # One thick fiber along z; the compute chunk y, x in [24, 32) lies wholly inside it.
    spec = PhantomSpec(shape=(48, 56, 56), fibers=0, radius=(7.0, 7.0), seed=3)
    volume, truth = render_slab(spec, [Fiber((27.5, 27.5), (0.0, 0.0), 7.0)], 0, 48)
    zarr.save_array(str(tmp_path / "thick.zarr"), volume, zarr_format=3)
    run = run_job(
        dask_client,
        tmp_path / "thick.zarr",
        tmp_path / "out",
        {"sigmas": [3.0], "chunk_shape": [48, 8, 8]},
    )
    inside = (slice(None), slice(24, 32), slice(24, 32))
    assert truth[inside].all()
    assert (run.root["labels/fibers/s0"][inside] > 0).all()
    whole = objectness(volume, run.loaded.spec) > run.result.summary["threshold"]["value"]
    components, _ = ndimage.label(whole)
    fibers = np.bincount(components.ravel()) >= MicrostructureParams().min_fiber_voxels
    fibers[0] = False  # the labels hold the fibers, not the specks of noise
    np.testing.assert_array_equal(run.root["labels/fibers/s0"][:] > 0, fibers[components])


def test_otsu_threshold_records_its_sample(
    dask_client: Any, phantom_dir: Path, tmp_path: Path
) -> None:
    ctx = make_ctx(phantom_dir, tmp_path, {"threshold": "otsu", "qc": False, "orientation": False})
    result = microstructure.run(ctx, microstructure.load(ctx), dask_client)
    threshold = result.summary["threshold"]
    assert threshold["method"] == "otsu" and 0 < threshold["value"] < 1
    assert threshold["sample"] == {"origin": [0, 0, 0], "stride": [1, 1, 1], "voxels": 96**3}
    assert "qc/fibers.png" not in result.uploads


def test_itk_runs_one_thread_per_worker(dask_client: Any) -> None:
    def threads() -> int:
        from consumers.pipelines.microstructure.objectness_itk import _Threads

        return int(_Threads.GetGlobalDefaultNumberOfThreads())

    assert set(dask_client.run(threads).values()) == {1}


def test_nan_outside_the_sample_fails_in_the_worker(dask_client: Any, tmp_path: Path) -> None:
    # The load-time sample boxes (64^3 around 1/4 and 3/4 of each axis) miss this corner.
    big = np.full((160, 48, 48), 10.0, dtype=np.float32)
    big[0, 0, 0] = np.nan
    zarr.save_array(str(tmp_path / "nan.zarr"), big, zarr_format=3)
    ctx = make_ctx(tmp_path / "nan.zarr", tmp_path / "out", {"qc": False})
    loaded = microstructure.load(ctx)  # the sample is clean
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        microstructure.run(ctx, loaded, dask_client)


# --- validation (load only: no cluster) -----------------------------------------------------


def _array(path: Path, data: np.ndarray, **attrs: Any) -> Path:
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, zarr_format=3)
    array[...] = data
    array.attrs.update(attrs)
    return path


def _json(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "zarr.json").write_text(text)
    return path


def _group(path: Path) -> Path:
    zarr.create_group(str(path), zarr_format=3)
    return path


def _v2(path: Path, data: np.ndarray) -> Path:
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, zarr_format=2)
    array[:] = data
    return path


BAD_SHAPE = json.dumps({"zarr_format": 3, "node_type": "array", "shape": "x"})
Maker = Callable[[Path], Path]
# case: (make the input, job params, settings, the reason's words)
CASES: dict[str, tuple[Maker, dict[str, Any], dict[str, Any], str]] = {
    "missing": (lambda p: p, {}, {}, "no zarr.json"),
    "corrupt json": (lambda p: _json(p, "{nope"), {}, {}, "corrupt zarr.json"),
    "bad metadata": (lambda p: _json(p, BAD_SHAPE), {}, {}, "corrupt zarr.json"),
    "group": (_group, {}, {}, "group, not an array"),
    "2d": (lambda p: _array(p, np.zeros((32, 32), np.uint8)), {}, {}, "expected a 3D"),
    "complex": (lambda p: _array(p, np.zeros((16,) * 3, np.complex64)), {}, {}, "dtype"),
    "too big": (
        lambda p: _array(p, np.zeros((16,) * 3, np.uint8)),
        {},
        {"max_voxels": 1000},
        "more than the limit",
    ),
    "nan": (lambda p: _array(p, np.full((16,) * 3, np.nan, np.float32)), {}, {}, "NaN"),
    "sigma too large": (
        lambda p: _array(p, np.zeros((8, 64, 64), np.uint16)),
        {"sigmas": [3.0]},
        {},
        "too large",
    ),
    "side under 4 voxels": (
        lambda p: _array(p, np.zeros((3, 64, 64), np.uint16)),
        {"sigmas": [0.5]},
        {},
        "every side needs 4 voxels",
    ),
    "voxel size attribute": (
        lambda p: _array(p, np.zeros((16,) * 3, np.uint8), voxel_size=[1, -1, 1]),
        {},
        {},
        "voxel_size",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_fail_with_one_line(case: str, tmp_path: Path) -> None:
    make, params, settings, message = CASES[case]
    path = make(tmp_path / "in.zarr")
    ctx = make_ctx(path, tmp_path / "out", params, **settings)
    with pytest.raises(InvalidInput, match=message) as info:
        microstructure.load(ctx)
    assert "\n" not in str(info.value)


def test_a_zarr_v2_array_loads(tmp_path: Path) -> None:
    data = (np.arange(16**3) % 5).reshape(16, 16, 16).astype("u1")
    _v2(tmp_path / "v2.zarr", data)
    loaded = microstructure.load(make_ctx(tmp_path / "v2.zarr", tmp_path / "out"))
    np.testing.assert_array_equal(np.asarray(loaded.volume.array[:, :, :]), data)


def test_an_ome_zarr_input_is_read_at_its_level_0(tmp_path: Path, chunked: Run) -> None:
    # The job's own output, an OME-Zarr 0.5 image, as the input of another job.
    ctx = make_ctx(Path(chunked.ctx.out.uri) / microstructure.OUTPUT, tmp_path)
    loaded = microstructure.load(ctx)
    level0 = np.asarray(chunked.root["s0"][:])
    assert loaded.volume.shape == level0.shape == chunked.volume.shape
    np.testing.assert_array_equal(np.asarray(loaded.volume.array[:, :, :]), level0)
    assert loaded.volume.voxel_size == chunked.loaded.volume.voxel_size  # from multiscales


def test_any_integer_or_float_dtype_loads(tmp_path: Path) -> None:
    for dtype in ("bool", "int8", "uint8", "int16", "uint32", "int64", "float32", "float64"):
        data = (np.arange(32**3) % 7 > 3).reshape(32, 32, 32).astype(dtype)
        ctx = make_ctx(_array(tmp_path / f"{dtype}.zarr", data), tmp_path / "out")
        loaded = microstructure.load(ctx)
        assert str(loaded.volume.dtype) == dtype and loaded.spec.gamma > 0


# --- building blocks ------------------------------------------------------------------------


def test_chunk_plans_keep_the_halo_cheap_and_aligned() -> None:
    plan = plan_chunks((384, 384, 384), 18, n_workers=2, max_task_voxels=80_000_000)
    assert plan.n_chunks == 2 and plan.overhead <= 0.10
    assert all(c % STORAGE_CHUNK == 0 for c in plan.chunks)
    single = plan_chunks((256, 256, 256), 18, n_workers=2, max_task_voxels=80_000_000)
    assert single.n_chunks == 1  # two slabs would cost 14%
    small = plan_chunks((384, 384, 384), 18, n_workers=2, max_task_voxels=5_000_000)
    assert small.largest_task_voxels <= 5_000_000 and small.overhead > 0.10  # memory first
    reference = plan_chunks(
        (384, 384, 384), 32, n_workers=2, max_task_voxels=10**9, requested=(100, 128, 128),
        boundary="reflect",
    )  # fmt: skip
    assert reference.computed_voxels / 384**3 == pytest.approx(3.75)
    assert reference.storage == (50, 64, 64)
    tail = plan_chunks(
        (200, 64, 64), 18, n_workers=1, max_task_voxels=10**9, requested=(64, 64, 64)
    )
    assert tail.dask_chunks[0] == (64, 64, 72)  # an 8-voxel remainder joins its neighbour


def test_pyramid_halves_the_finest_axes_first() -> None:
    levels = ngff.pyramid((64, 512, 512), (4.0, 1.0, 1.0))
    assert [lv.step for lv in levels[1:4]] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert levels[1].shape == (64, 256, 256) and levels[3].factors == (2, 8, 8)
    iso = ngff.pyramid((100, 100, 100), (1.0, 1.0, 1.0))
    assert [lv.shape for lv in iso] == [(100,) * 3, (50,) * 3, (25,) * 3]
    odd = ngff.downsample_mean(np.arange(27, dtype=np.float32).reshape(3, 3, 3), (2, 2, 2))
    assert odd.shape == (2, 2, 2) and odd[1, 1, 1] == 26


def test_otsu_noise_and_orientation() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.8, 0.05, 3000)])
    cut = fiberstats.otsu(values)  # any cut in the empty gap separates perfectly
    assert 0.15 < cut < 0.6 and np.count_nonzero(values > cut) == 3000
    boxes = [rng.normal(100.0, 7.0, (32, 32, 32))]
    assert fiberstats.noise_sigma(boxes)["noise"] == pytest.approx(7.0, rel=0.05)
    # Rods along (cos 10, sin 10, 0) in (z, y, x): the mean direction comes back.
    labels = np.zeros((40, 40, 40), np.uint32)
    for k, x0 in enumerate((5, 15, 25), start=1):
        for z in range(40):
            y = 10 + round(z * math.tan(math.radians(10)))
            labels[z, y : y + 2, x0 : x0 + 2] = k
    moments = fiberstats.merge_moments([fiberstats.block_moments(labels, (0, 0, 0))], 3)
    stats = fiberstats.fiber_statistics(
        moments, labels.size, min_fiber_voxels=10, voxel_size=(1, 1, 1), with_orientation=True
    )
    assert stats["fibers"] == 3
    assert stats["orientation"]["angle_from_z_deg"] == pytest.approx(10, abs=1)


def test_a_cropped_objectness_is_the_same_voxels_of_the_whole_call() -> None:
    # What each chunk's task does: the Hessian over chunk + halo, the measure over the chunk.
    rng = np.random.default_rng(5)
    volume = ndimage.gaussian_filter(rng.normal(size=(40, 44, 48)), 1.5).astype(np.float32)
    spec = ObjectnessSpec(sigmas=(1.0, 2.0), alpha=0.05, beta=1.0, gamma=0.01)
    full = objectness(volume, spec)
    part = objectness(volume, spec, ((18, 0), (3, 18), (0, 7)))
    assert full.max() > 0.1
    np.testing.assert_array_equal(part, full[18:, 3:-18, :-7])
    with pytest.raises(ValueError, match="leaves nothing"):
        objectness(volume, spec, ((20, 20), (0, 0), (0, 0)))


def test_the_shared_pass_hessian_is_itk_hessian_filter() -> None:
    # 17 one-axis passes, cut as they go, against ITK's own 18-pass Hessian on the whole input.
    from itk.itkPyBufferPython import itkPyBufferISSRTD33

    from consumers.pipelines.microstructure import objectness_itk

    rng = np.random.default_rng(8)
    volume = ndimage.gaussian_filter(rng.normal(size=(30, 34, 38)), 1.0).astype(np.float32)
    volume[:, :, 20:] += 3 * volume[:, :, :18]  # not symmetric along any axis
    image = objectness_itk._Buffer._GetImageViewFromArray(volume, volume.shape[::-1], 1)
    theirs = objectness_itk._Hessian.New()
    theirs.SetInput(image)
    theirs.SetSigma(1.5)
    theirs.SetNormalizeAcrossScale(True)
    theirs.Update()
    view = np.asarray(itkPyBufferISSRTD33._GetArrayViewFromImage(theirs.GetOutput()))
    reference = view.view(np.float64).reshape(*volume.shape, 6)
    crop = ((4, 2), (0, 5), (3, 0))
    ours = np.stack(objectness_itk.hessian(volume, 1.5, crop), axis=-1)
    kept = reference[4:-2, :-5, 3:]
    assert (np.abs(kept).max(axis=(0, 1, 2)) > 0.01).all()  # every component is exercised
    np.testing.assert_array_equal(ours, kept)  # ITK's passes in ITK's order: the same bits


@pytest.mark.parametrize("bright", [True, False])
def test_the_measure_skips_only_voxels_itk_sets_to_zero(bright: bool) -> None:
    # The trace screen against ITK's measure on every voxel: the same bits, and it skips many.
    from itk.itkPyBufferPython import itkPyBufferISSRTD33

    from consumers.pipelines.microstructure import objectness_itk

    rng = np.random.default_rng(10)
    volume = ndimage.gaussian_filter(rng.normal(size=(32, 36, 40)), 1.0).astype(np.float32)
    spec = ObjectnessSpec(sigmas=(1.5,), alpha=0.5, beta=0.5, gamma=0.05, bright=bright)
    parts = objectness_itk.hessian(volume, 1.5, ((0, 0), (0, 0), (0, 0)))
    tensor = np.stack(parts, axis=-1).astype(np.float64)
    image = itkPyBufferISSRTD33._GetImageViewFromArray(tensor, volume.shape[::-1], 6)
    measure = objectness_itk._measure(spec)
    measure.SetInput(image)
    every_voxel = objectness_itk._result(measure, volume.shape)
    screened = objectness_itk._compact_measure(parts, spec)
    np.testing.assert_array_equal(screened, every_voxel)
    assert np.count_nonzero(every_voxel > 0.1) > 100
    kept = objectness_itk.candidates(parts, bright)
    assert 0.2 < kept.mean() < 0.8
    assert not every_voxel[~kept].any()


def test_objectness_equals_itk_whole_volume_call() -> None:
    rng = np.random.default_rng(9)
    volume = ndimage.gaussian_filter(rng.normal(size=(36, 40, 44)), 1.5).astype(np.float32)
    spec = ObjectnessSpec(sigmas=(1.0, 2.0), alpha=0.05, beta=1.0, gamma=0.01)
    ours, theirs = objectness(volume, spec), objectness_whole(volume, spec)
    assert theirs.max() > 0.1 and np.count_nonzero(theirs > 0.01) > 1000
    np.testing.assert_array_equal(ours, theirs)


def test_workers_import_only_what_their_tasks_use() -> None:
    # A worker that unpickles a task from consumers.pipelines must not pull in every pipeline's
    # stack (dipy, matplotlib, ome-zarr-py + scikit-image): ~7 CPU s per worker process.
    modules = PIPELINES["microstructure"].worker_modules
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert {"itk", "scipy", "zarr"} <= loaded
    assert not {"dipy", "matplotlib", "ome_zarr", "skimage", "celery"} & loaded


def test_regions_are_written_chunk_aligned(tmp_path: Path) -> None:
    target = zarr.create_array(
        ngff.ObjectZarrStore(LocalStore(tmp_path)), shape=(8, 8, 8), chunks=(4, 4, 4), dtype="u1"
    )
    written = ngff.write_region(np.ones((4, 8, 4), np.uint8), target, (4, 0, 4))
    assert sorted(info.key for info in written) == ["c/1/0/1", "c/1/1/1"]
    assert target[4:, :, 4:].all() and not target[:4].any()
    with pytest.raises(ValueError, match="not aligned"):
        ngff.write_region(np.ones((4, 4, 4), np.uint8), target, (2, 0, 0))
