"""The tractography job equals the serial dipy calls: CSD coefficient for coefficient, and the
union of its shards streamline for streamline; every seed is in exactly one shard; a failed
shard is retried, and one that keeps failing fails the job."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dipy.io.stateful_tractogram import StatefulTractogram
from dipy.io.streamline import load_tractogram
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst
from dipy.reconst.dti import TensorModel
from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
from dipy.tracking.tracker import deterministic_tracking, probabilistic_tracking
from dipy.tracking.utils import seeds_from_mask
from matplotlib.image import imread

from consumers.pipelines import PIPELINES
from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.diffusion import csd, tracking, tractography
from consumers.pipelines.fanout import TaskFailed, part_count
from producer.synth.hcp import write_subject
from shared.errors import InvalidInput, MissingInput, TransientError
from shared.jobspec import JobSpec
from shared.params import TractographyParams
from shared.settings import Settings
from shared.store import LocalStore, ObjectInfo, ObjectStore
from shared.timing import StageTimer

# dipy's CSD writes, and its trackers read, the legacy descoteaux07 basis by default; the
# pipeline and these references agree on it, so the notice says nothing about this code.
pytestmark = pytest.mark.filterwarnings("ignore:The legacy descoteaux07:PendingDeprecationWarning")

CSD_TOLERANCE = 1e-6
POINT_TOLERANCE_MM = 1e-4  # .trk stores float32 millimetres: ~1e-5 mm at brain coordinates
DWI = "T1w/Diffusion/data.nii.gz"


class FailingStore(LocalStore):
    """A store whose ``put_file`` of one key raises ``error`` the first ``failures`` times.

    It is pickled into the shard tasks and runs in the worker processes, so the tries are
    counted in files (``tally``), which every process sees; importable from this module, so
    the workers unpickle it by reference.
    """

    def __init__(
        self, root: Path, *, key: str, error: type[Exception], failures: int, tally: Path
    ) -> None:
        super().__init__(root)
        self.key, self.error, self.failures, self.tally = key, error, failures, tally

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        if key == self.key:
            self.tally.mkdir(parents=True, exist_ok=True)
            tries = len(list(self.tally.iterdir()))
            (self.tally / uuid.uuid4().hex).touch()
            if tries < self.failures:
                raise self.error(f"injected failure {tries + 1} writing {key}")
        return super().put_file(key, path)

    def tries(self) -> int:
        return len(list(self.tally.iterdir())) if self.tally.exists() else 0


@pytest.fixture(scope="module")
def synthetic_subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic HCP subject (30x36x30, 147 volumes, aparc+aseg), written once."""
    root = tmp_path_factory.mktemp("synth")
    write_subject(LocalStore(root), "100307", size="small", seed=7)
    return root / "100307"


@pytest.fixture
def tract_ctx(tmp_path: Path) -> Iterator[Callable[..., PipelineContext]]:
    def make(
        subject_dir: Path, params: dict[str, Any] | None = None, out: ObjectStore | None = None
    ) -> PipelineContext:
        return PipelineContext(
            spec=JobSpec(
                pipeline="tractography",
                input_uri=str(subject_dir),
                results_uri=str(tmp_path / "out"),
                params=params or {},
            ),
            inputs=LocalStore(subject_dir),
            out=out or LocalStore(tmp_path / "out" / "attempt"),
            timer=StageTimer(),
            settings=Settings(),
            workdir=tmp_path / f"work-{uuid.uuid4().hex[:6]}",
        )

    yield make


def run_job(ctx: PipelineContext, client: Any) -> tuple[tractography.Loaded, PipelineResult]:
    """The job's result, and the subject as loaded (the job lets its own copy's DWI go)."""
    loaded = tractography.load(ctx)
    result = tractography.run(ctx, loaded, client)
    assert loaded.subject.data.size == 0 and loaded.subject.shape == loaded.subject.mask.shape
    return tractography.load(ctx), result


def load_shards(
    ctx: PipelineContext, result: PipelineResult, dwi: Path
) -> list[StatefulTractogram]:
    """Every shard, read back from the store and loaded against the DWI with the bbox check."""
    loaded = []
    shards = result.summary["shards"]
    assert [f.key for f in result.files[len(shards) :]] == ["tractogram.trx"]
    for shard, info in zip(shards, result.files[: len(shards)], strict=True):
        assert shard["key"] == info.key
        blob = ctx.out.get_bytes(info.key)
        assert len(blob) == info.bytes == shard["bytes"]
        assert hashlib.sha256(blob).hexdigest() == info.sha256 == shard["sha256"]
        path = ctx.workdir / "check" / info.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        sft = load_tractogram(str(path), str(dwi), bbox_valid_check=True)
        # dipy logs and returns False (no exception) when the header does not match.
        assert isinstance(sft, StatefulTractogram), f"{info.key} does not load against the DWI"
        assert len(sft.streamlines) == shard["streamlines"]
        loaded.append(sft)
    return loaded


def check_merged(
    ctx: PipelineContext, result: PipelineResult, dwi: Path, shards: list[StatefulTractogram]
) -> None:
    """``tractogram.trx`` holds exactly the shards' streamlines, in shard order, and opens
    with trx-python and with dipy's loader against the DWI, bounding-box check on."""
    from trx.trx_file_memmap import load as load_trx

    merged = result.summary["tractogram"]
    info = result.files[-1]
    assert info.key == merged["key"] == "tractogram.trx" and info.bytes == merged["bytes"]
    path = ctx.workdir / "check" / "tractogram.trx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ctx.out.get_bytes(info.key))
    expected = [np.asarray(s, np.float32) for sft in shards for s in sft.streamlines]
    assert merged["streamlines"] == len(expected) == result.summary["streamlines"]
    trx = load_trx(str(path))
    try:
        theirs = [np.array(s) for s in trx.streamlines]  # copies: close() unmaps the file
        np.testing.assert_array_equal(trx.header["VOXEL_TO_RASMM"], shards[0].affine)
    finally:
        trx.close()
    assert len(theirs) == len(expected)
    assert [len(a) for a in theirs] == [len(b) for b in expected]
    # dipy reads a shard through voxel space and back: float32 rounding, ~1e-6 mm.
    worst = max(float(np.abs(a - b).max()) for a, b in zip(theirs, expected, strict=True))
    assert worst <= 1e-5, worst
    sft = load_tractogram(str(path), str(dwi), bbox_valid_check=True)
    assert isinstance(sft, StatefulTractogram), "tractogram.trx does not load against the DWI"
    worst = max(float(np.abs(a - b).max()) for a, b in zip(sft.streamlines, expected, strict=True))
    assert worst <= 1e-5, worst


def max_point_distance(
    ours: list[np.ndarray],
    reference: list[np.ndarray],
    affine: np.ndarray | None = None,
    shape: tuple[int, ...] | None = None,
) -> float:
    """Largest distance between corresponding points. Given the grid, points dipy left on an
    image face (which ``bounds`` moves by at most its margin) are held to that margin instead
    and left out of the figure returned."""
    from consumers.pipelines.diffusion.bounds import EDGE_TOLERANCE, margin_voxels

    assert len(ours) == len(reference)
    worst = 0.0
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape
        distance = np.linalg.norm(a - b, axis=1)
        if affine is not None and shape is not None:
            inverse = np.linalg.inv(affine)
            vox = b @ inverse[:3, :3].T + inverse[:3, 3]
            dims = np.asarray(shape[:3])
            face = ((vox < -0.5 + EDGE_TOLERANCE) | (vox > dims - 0.5 - EDGE_TOLERANCE)).any(1)
            voxel = float(np.linalg.norm(affine[:3, :3], axis=0).max())
            limit = POINT_TOLERANCE_MM + 1.01 * margin_voxels(affine, shape) * voxel
            assert distance[face].max(initial=0.0) <= limit
            distance = distance[~face]
        worst = max(worst, float(distance.max(initial=0.0)))
    return worst


def serial_fa(subject: Any) -> np.ndarray:
    return np.asarray(TensorModel(subject.gtab).fit(subject.data, mask=subject.mask).fa)


@pytest.mark.parametrize("chunks", [None, 7], ids=["per-worker", "7-chunks"])
def test_chunked_csd_equals_serial_dipy(
    synthetic_subject: Path,
    tract_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    chunks: int | None,
) -> None:
    ctx = tract_ctx(synthetic_subject)
    loaded = tractography.load(ctx)
    subject, wm = loaded.subject, loaded.wm
    assert wm is not None
    if chunks == 7:
        assert int(wm.sum()) % 7 != 0, "the remainder case needs a count 7 does not divide"
    fa = serial_fa(subject)
    response = csd.response_from_mask(subject.gtab, subject.data, wm & (fa > 0.7), 0.7)

    fit = csd.fit_csd(dask_client, subject.data, wm, subject.gtab, response, 8, chunks)

    reference_response, _ = response_from_mask_ssst(subject.gtab, subject.data, wm & (fa > 0.7))
    serial = ConstrainedSphericalDeconvModel(subject.gtab, reference_response).fit(
        subject.data, mask=wm
    )
    diff = float(np.max(np.abs(fit.shm_coeff - serial.shm_coeff)))
    print(f"CSD chunks={chunks}: max|d coeff|={diff:.3g} over {int(wm.sum())} WM voxels")
    assert diff <= CSD_TOLERANCE
    assert fit.shm_coeff.shape == (*subject.shape, 45)
    assert np.count_nonzero(np.abs(fit.shm_coeff[wm]).sum(axis=1)) == int(wm.sum())
    assert fit.chunks == (7 if chunks == 7 else 8)
    assert {task.worker for task in fit.tasks} == set(
        dask_client.scheduler_info(n_workers=-1)["workers"]
    )


def test_job_equals_serial_dipy_pipeline(
    synthetic_subject: Path, tract_ctx: Callable[..., PipelineContext], dask_client: Any
) -> None:
    # 7 shards never divide the seeds evenly here; a 2 mm step (of 6 mm voxels) keeps it quick.
    ctx = tract_ctx(synthetic_subject, {"shards": 7, "step_size": 2.0})
    loaded, result = run_job(ctx, dask_client)
    subject, wm = loaded.subject, loaded.wm
    assert wm is not None
    summary = result.summary

    # Every seed in exactly one shard, the remainder included.
    n_seeds = int(wm.sum())
    assert summary["seeds"] == n_seeds and n_seeds % 7 != 0
    ranges = [(s["seed_start"], s["seed_stop"]) for s in summary["shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_seeds
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert len(ranges) == 7 and {b - a for a, b in ranges} == {n_seeds // 7, n_seeds // 7 + 1}
    assert summary["streamlines"] == sum(s["streamlines"] for s in summary["shards"]) > 0
    shard_keys = [f"shards/sl-{i:04d}.trk" for i in range(7)]
    assert [f.key for f in result.files] == [*shard_keys, "tractogram.trx"]

    # The serial dipy pipeline on the same arrays: FA, response, CSD, deterministic tracking.
    fa = serial_fa(subject)
    response, ratio = response_from_mask_ssst(subject.gtab, subject.data, wm & (fa > 0.7))
    np.testing.assert_allclose(summary["response"]["evals"], response[0], rtol=1e-6)
    assert summary["response"]["s0"] == pytest.approx(float(response[1]), rel=1e-6)
    assert summary["response"]["ratio"] == pytest.approx(float(ratio), rel=1e-5)
    sh = ConstrainedSphericalDeconvModel(subject.gtab, response).fit(subject.data, mask=wm)
    seeds = seeds_from_mask(wm, subject.affine, density=1)
    serial = list(
        deterministic_tracking(
            seeds,
            ThresholdStoppingCriterion(fa, 0.1),
            subject.affine,
            sh=sh.shm_coeff,
            min_len=10,
            max_len=250,
            step_size=2.0,
            max_angle=30,
        )
    )
    shards = load_shards(ctx, result, synthetic_subject / DWI)
    check_merged(ctx, result, synthetic_subject / DWI, shards)
    ours = [np.asarray(s) for sft in shards for s in sft.streamlines]
    distance = max_point_distance(ours, serial, subject.affine, subject.shape)
    print(f"tracking: {len(ours)} streamlines from {n_seeds} seeds, max distance {distance:.3g} mm")
    assert distance <= POINT_TOLERANCE_MM

    # The consumer's uploads, the QC image, the stages and the per-worker busy times.
    assert list(result.uploads) == [
        "fa.nii.gz",
        "md.nii.gz",
        "wm_mask.nii.gz",
        "qc/tractography.png",
    ]
    pixels = imread(result.uploads["qc/tractography.png"])
    assert pixels.shape[0] > pixels.shape[1] > 500  # three rows of three views
    stages = set(ctx.timer.stages)
    assert {"load", "mask", "dti", "response", "csd", "tracking", "merge", "write", "qc"} == stages
    # What went to the workers: the white matter's box, not the grid.
    assert 0.0 < ctx.timer.extra["tracking_box"]["fraction"] < 1.0
    for key in ("dti_workers_busy_s", "csd_workers_busy_s", "tracking_workers_busy_s"):
        busy = ctx.timer.extra[key]
        assert busy and all(addr.startswith("tcp://") for addr in busy), key


def test_every_seed_in_exactly_one_shard() -> None:
    for n_seeds, n_shards in [(10, 3), (4414, 8), (7, 7), (5, 9), (1, 4), (1000, 1)]:
        bounds = tracking.plan_shards(n_seeds, n_shards)
        covered = np.concatenate([np.arange(a, b) for a, b in bounds])
        assert np.array_equal(covered, np.arange(n_seeds))
        assert len(bounds) == min(n_seeds, n_shards)
        sizes = [b - a for a, b in bounds]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        # Same split as np.array_split, the documented rule.
        expected = [len(p) for p in np.array_split(np.arange(n_seeds), len(bounds))]
        assert sizes == expected
    assert part_count(None, tracking.SHARDS_PER_WORKER, 2, 10_000) == 2 * tracking.SHARDS_PER_WORKER
    assert part_count(50, tracking.SHARDS_PER_WORKER, 2, 10) == 10


@pytest.mark.parametrize(
    ("n", "grid"), [(1, (1, 1, 1)), (2, (2, 1, 1)), (4, (2, 2, 1)), (8, (2, 2, 2)), (12, (3, 2, 2))]
)
def test_seed_grid(n: int, grid: tuple[int, int, int]) -> None:
    assert tracking.seed_grid(n) == grid
    wm = np.zeros((4, 4, 4), bool)
    wm[1, 2, 3] = wm[2, 2, 2] = True
    assert len(tracking.make_seeds(wm, np.eye(4), n)) == 2 * n


def small64d_ctx(
    hcp_subject: Callable[..., Path],
    tract_ctx: Callable[..., PipelineContext],
    params: dict[str, Any] | None = None,
    out: ObjectStore | None = None,
) -> PipelineContext:
    """dipy's small_64D (no aparc+aseg): white matter from FA."""
    return tract_ctx(hcp_subject(), {"wm_source": "fa", **(params or {})}, out)


@pytest.mark.parametrize("tracker", ["probabilistic", "deterministic"])
def test_small64d_trackers_and_trx(
    hcp_subject: Callable[..., Path],
    tract_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    tracker: str,
) -> None:
    params = {"tracker": tracker, "random_seed": 42, "output_format": "trx", "shards": 3}
    ctx = small64d_ctx(hcp_subject, tract_ctx, params)
    loaded, result = run_job(ctx, dask_client)
    assert all(f.key.endswith(".trx") for f in result.files) and len(result.files) == 4
    shards = load_shards(ctx, result, hcp_subject() / DWI)
    check_merged(ctx, result, hcp_subject() / DWI, shards)
    ours = [np.asarray(s) for sft in shards for s in sft.streamlines]
    assert ours and "mask" in ctx.timer.stages

    # Same seeds, same arrays, one serial call: the same streamlines (a seeded probabilistic
    # tracker draws per seed position, so sharding does not change its draws either).
    subject, wm = loaded.subject, result.summary
    fa = np.nan_to_num(serial_fa(subject))
    mask = subject.mask & (fa > 0.2)
    assert wm["wm_voxels"] == int(mask.sum())
    response, _ = response_from_mask_ssst(subject.gtab, subject.data, mask & (fa > 0.7))
    sh = ConstrainedSphericalDeconvModel(subject.gtab, response).fit(subject.data, mask=mask)
    run = probabilistic_tracking if tracker == "probabilistic" else deterministic_tracking
    extra = {"random_seed": 42} if tracker == "probabilistic" else {}
    serial = list(
        run(
            seeds_from_mask(mask, subject.affine, density=1),
            ThresholdStoppingCriterion(fa, 0.1),
            subject.affine,
            sh=sh.shm_coeff,
            min_len=10,
            max_len=250,
            step_size=0.5,
            max_angle=30,
            **extra,
        )
    )
    assert max_point_distance(ours, serial) <= POINT_TOLERANCE_MM


def test_a_shard_that_fails_once_is_retried(
    hcp_subject: Callable[..., Path],
    tract_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    tmp_path: Path,
) -> None:
    store = FailingStore(
        tmp_path / "flaky",
        key="shards/sl-0001.trk",
        error=TransientError,
        failures=1,
        tally=tmp_path / "tries",
    )
    ctx = small64d_ctx(hcp_subject, tract_ctx, {"shards": 3, "qc": False}, store)
    _, result = run_job(ctx, dask_client)
    assert store.tries() == 2  # it failed, and the retry wrote it
    shard_keys = [f"shards/sl-{i:04d}.trk" for i in range(3)]
    assert [f.key for f in result.files] == [*shard_keys, "tractogram.trx"]
    load_shards(ctx, result, hcp_subject() / DWI)
    assert "qc/tractography.png" not in result.uploads


@pytest.mark.parametrize(
    ("error", "expected"),
    [(TransientError, TransientError), (RuntimeError, TaskFailed)],
    ids=["transient-stays-transient", "deterministic-is-permanent"],
)
def test_a_shard_that_keeps_failing_fails_the_job(
    hcp_subject: Callable[..., Path],
    tract_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    tmp_path: Path,
    error: type[Exception],
    expected: type[Exception],
) -> None:
    store = FailingStore(
        tmp_path / "broken",
        key="shards/sl-0002.trk",
        error=error,
        failures=100,
        tally=tmp_path / "tries",
    )
    ctx = small64d_ctx(hcp_subject, tract_ctx, {"shards": 3, "qc": False}, store)
    with pytest.raises(expected, match=r"shard shards/sl-0002\.trk \(seeds \d+\.\.\d+\)"):
        run_job(ctx, dask_client)
    # A transient error: the first try and two reruns. A deterministic one: one try, no rerun.
    assert store.tries() == (3 if error is TransientError else 1)


def test_without_aparc_auto_takes_fa_and_segmentation_names_the_alternative(
    synthetic_subject: Path, tract_ctx: Callable[..., PipelineContext], tmp_path: Path
) -> None:
    import shutil

    copy = shutil.copytree(synthetic_subject, tmp_path / "100307")
    (copy / "T1w/aparc+aseg.nii.gz").unlink()
    for asked in ("segmentation", "aparc"):
        with pytest.raises(MissingInput, match=r"no segmentation for .*use wm_source=fa"):
            tractography.load(tract_ctx(copy, {"wm_source": asked}))
    loaded = tractography.load(tract_ctx(copy))  # the default, auto
    assert loaded.wm_source == "fa" and loaded.wm is None
    assert tractography.load(tract_ctx(synthetic_subject)).wm_source == "segmentation"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"wm_labels": [9999]}, "has no white matter: none of the labels 9999"),
        ({"sh_order_max": 12}, None),  # 144 directions fit order 12 (91 coefficients)
    ],
)
def test_load_checks(
    synthetic_subject: Path,
    tract_ctx: Callable[..., PipelineContext],
    params: dict[str, Any],
    message: str | None,
) -> None:
    ctx = tract_ctx(synthetic_subject, params)
    if message is None:
        assert tractography.load(ctx).wm is not None
    else:
        with pytest.raises(InvalidInput, match=message):
            tractography.load(ctx)


def test_too_few_directions_for_the_sh_order(
    hcp_subject: Callable[..., Path], tract_ctx: Callable[..., PipelineContext]
) -> None:
    ctx = small64d_ctx(hcp_subject, tract_ctx, {"sh_order_max": 12})
    with pytest.raises(InvalidInput, match=r"only 64 diffusion-weighted.*91 coefficients"):
        tractography.load(ctx)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fa_wm_threshold": 0.999}, "no brain voxel has FA > 0.999"),
        ({"response_fa_thr": 0.999}, "no white-matter voxel has FA > 0.999"),
        (
            {"response": "auto", "response_roi_radii": 1, "response_fa_thr": 0.95},
            "within 1 voxels of the volume centre",
        ),
    ],
    ids=["empty-wm", "empty-response-mask", "empty-auto-cube"],
)
def test_run_refuses_what_cannot_be_tracked(
    hcp_subject: Callable[..., Path],
    tract_ctx: Callable[..., PipelineContext],
    dask_client: Any,
    params: dict[str, Any],
    message: str,
) -> None:
    ctx = small64d_ctx(hcp_subject, tract_ctx, params)
    with pytest.raises(InvalidInput, match=message):
        run_job(ctx, dask_client)
    assert list(ctx.out.list()) == []  # nothing was tracked or written


@pytest.mark.parametrize(
    "params",
    [
        {"sh_order_max": 7},
        {"sh_order_max": 14},
        {"min_len": 300},
        {"seeds_per_voxel": 0},
        {"random_seed": 0},
        {"wm_labels": []},
        {"wm_labels": "2,x"},
        {"tracker": "eudx"},
        {"output_format": "tck"},
    ],
    ids=str,
)
def test_bad_parameters_are_refused_before_queueing(params: dict[str, Any]) -> None:
    message = {"pipeline": "tractography", "input_uri": "/d/100307", "results_uri": "/r"}
    with pytest.raises(InvalidInput, match="invalid job"):
        JobSpec.from_message({**message, "params": params})


def test_parameters_and_registry() -> None:
    spec = JobSpec(
        pipeline="tractography",
        input_uri="/d/100307",
        results_uri="/r",
        params={"wm_labels": "41,2,2"},
    )
    assert spec.params["wm_labels"] == [2, 41]
    assert isinstance(spec.parameters(), TractographyParams)
    pipeline = PIPELINES["tractography"]
    assert pipeline.load is tractography.load
    assert "consumers.pipelines.diffusion.tracking" in pipeline.worker_modules


def test_workers_import_no_plotting_or_other_pipelines() -> None:
    """What a worker imports for this job (its warm modules, which hold every task function)
    leaves out matplotlib and the micro-CT stack: seconds of CPU per worker, per job."""
    modules = PIPELINES["tractography"].worker_modules
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(','.join(m for m in ('matplotlib', 'zarr', 'itk', 'typer')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == ""
    for task in (csd.fit_chunk, tracking.track_shard):
        assert task.__module__ in modules
    assert "consumers.pipelines.diffusion.dti" in modules  # the FA fit's tasks
