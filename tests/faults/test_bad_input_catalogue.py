"""The bad-input catalogue: every way a job can be wrong, answered with one line.

Consumer side: one real consumer (``voxfleet worker``) takes every case of this module in turn.
Each job must end ``failed`` with a one-line reason naming the problem, run at most once (no
retry loop), leave a dead-letter record, and leave the consumer running for the next case.
CLI side: the real ``voxfleet enqueue`` / ``campaign submit`` refuse what they can before
anything reaches Redis: exit 2, one line on stderr, an empty broker database.

Every case appends its observation to the reliability log (``tests/faults/record.py``).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

import shared.settings
from consumers.ledger import Ledger
from producer.cli import app as cli
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.faults import inputs as bad
from tests.faults.broker import raw_task
from tests.faults.record import record
from tests.integration.harness import (
    consumer_env,
    dask_cluster_processes,
    running_consumer,
    upload_dir,
)

APARC = "T1w/aparc+aseg.nii.gz"
DATA = f"{bad.DWI}/data.nii.gz"
MASK = f"{bad.DWI}/nodif_brain_mask.nii.gz"
BVALS = f"{bad.DWI}/bvals"
BVECS = f"{bad.DWI}/bvecs"
# 20 directions fit CSD up to order 4 (15 coefficients)
TRACT = {"sh_order_max": 4}
# The string-dtype case writes a Zarr dtype that zarr itself calls unstable: that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:zarr.*")


@dataclass(frozen=True)
class Case:
    """One bad job. ``mutate`` breaks a copy of the good subject (or volume); ``raw`` is a
    message body sent past the producer's validation, as a hostile or buggy client could."""

    pipeline: str
    needle: str
    mutate: Callable[[Path], None] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    volume: bool = False  # break the Zarr volume instead of the subject
    on_s3: bool = False  # serve the broken input from the S3 server instead of a local folder


def _subject(pipeline: str, needle: str, mutate: Callable[[Path], None], **kw: Any) -> Case:
    return Case(pipeline, needle, mutate, **kw)


def _volume(needle: str, mutate: Callable[[Path], None] | None, **kw: Any) -> Case:
    return Case("microstructure", needle, mutate, volume=True, **kw)


def _raw(pipeline: str, needle: str, **body: Any) -> Case:
    base = {"pipeline": pipeline, "input_uri": "s3://b/hcp/100307", "results_uri": "/tmp/x"}
    return Case(pipeline, needle, raw={**base, **body})


def _nifti_2d_dwi(folder: Path) -> None:
    bad.nifti(DATA, lambda d: d[..., 0])(folder)


CONSUMER_CASES: dict[str, Case] = {
    # dti: the NIfTI inputs and the gradient table
    "missing DWI (data.nii.gz)": _subject("dti", "missing input", bad.delete(DATA)),
    "missing DWI on S3": _subject("dti", "missing input", bad.delete(DATA), on_s3=True),
    "garbage bytes as NIfTI": _subject("dti", "not a readable NIfTI", bad.garbage(DATA)),
    "truncated NIfTI on S3": _subject(
        "dti", "data.nii.gz is corrupt or truncated", bad.truncate(DATA), on_s3=True
    ),
    "empty (0-byte) brain mask": _subject("dti", "is empty", bad.empty(MASK)),
    "DWI is 3D, not 4D": _subject("dti", "must be 4D", _nifti_2d_dwi),
    "DWI of complex numbers (wrong dtype)": _subject(
        "dti", "expected real numbers", bad.nifti(DATA, lambda d: (d + 1j).astype(np.complex64))
    ),
    "DWI header above the voxel limit": _subject(
        "dti", "above the limit", bad.header_only(DATA, (2048, 2048, 2048, 22))
    ),
    "DWI flooded with NaN/inf": _subject(
        "dti", "NaN or infinite samples in the brain mask", bad.nifti(DATA, bad.nan_flood)
    ),
    "mask on another grid shape": _subject(
        "dti", "nodif_brain_mask.nii.gz has shape", bad.nifti(MASK, lambda m: m[:-1])
    ),
    "empty brain mask (all zero)": _subject(
        "dti", "is empty (no brain voxels)", bad.nifti(MASK, np.zeros_like)
    ),
    "bvals count differs from the DWI": _subject(
        "dti", "bvals has 21 values but", bad.edit_table(BVALS, bad.drop_last_bval)
    ),
    "bvals with NaN": _subject(
        "dti", "bvals contains NaN or infinite", bad.edit_table(BVALS, bad.nan_bval)
    ),
    "bvals not numbers": _subject("dti", "not a table of numbers", bad.text(BVALS, "0 b 1000\n")),
    "bvecs zero vector for a weighted volume": _subject(
        "dti", "has length 0, not 1", bad.edit_table(BVECS, bad.zero_bvec)
    ),
    "bvecs non-unit vector": _subject(
        "dti", "has length 2.5, not 1", bad.edit_table(BVECS, bad.long_bvec)
    ),
    "no b0 volume": _subject("dti", "no b0 volume", bad.no_b0),
    # tractography: the segmentation and the white matter
    # (with the default wm_source=auto a subject without one is tracked in FA white matter)
    "aparc+aseg missing, wm_source=segmentation": _subject(
        "tractography",
        "use wm_source=fa",
        bad.delete(APARC),
        params={**TRACT, "wm_source": "segmentation"},
    ),
    "aparc+aseg with no white-matter label (empty WM mask)": _subject(
        "tractography", "has no white matter", bad.nifti(APARC, lambda a: a * 0 + 3), params=TRACT
    ),
    "aparc+aseg with non-integer labels": _subject(
        "tractography",
        "non-integer labels",
        bad.nifti(APARC, lambda a: a.astype(np.float32) + 0.37),
        params=TRACT,
    ),
    "FA threshold leaves an empty WM mask (zero seeds)": _subject(
        "tractography",
        "white-matter mask is empty",
        lambda folder: None,
        params={**TRACT, "wm_source": "fa", "fa_wm_threshold": 0.99},
    ),
    "too few directions for the CSD order": _subject(
        "tractography", "CSD at sh_order_max 8 fits 45", lambda folder: None
    ),
    # microstructure: the Zarr volume
    "non-Zarr input (an HCP subject folder)": _subject(
        "microstructure", "not a Zarr array", lambda folder: None
    ),
    "non-Zarr input (a plain file)": _volume("not a Zarr array", bad.replace_with_file),
    "corrupt zarr.json": _volume("corrupt zarr.json", bad.zarr_json(lambda m: "{not json")),
    "Zarr v2 array": _volume("Zarr v2", lambda path: (path / "zarr.json").rename(path / ".zarray")),
    "Zarr group, not an array": _volume(
        "is a Zarr group", bad.zarr_json(lambda m: {"zarr_format": 3, "node_type": "group"})
    ),
    "2D array (wrong dimensions)": _volume(
        "expected a 3D volume", lambda path: bad.write_volume(path, np.ones((16, 16), np.uint8))
    ),
    "shape above the voxel limit": _volume(
        "more than the limit", bad.zarr_json(lambda m: {**m, "shape": [4096, 4096, 4096]})
    ),
    "string dtype (wrong dtype)": _volume(
        "unsupported dtype",
        lambda path: bad.write_volume(path, np.full((16, 16, 16), "ab", dtype="<U2")),
    ),
    "NaN voxels": _volume(
        "NaN or infinite values",
        lambda path: bad.write_volume(path, np.full((16, 16, 16), np.nan, np.float32)),
    ),
    "corrupt chunk bytes": _volume("", bad.corrupt_chunks),
    "sigma too large for the volume": _volume(
        "too large for a volume", None, params={"sigmas": [8.0]}
    ),
    # microstructure: the other formats (TIFF stacks, HDF5, OME-Zarr)
    "TIFF stack of one 2D image (not a volume)": _volume(
        "a single 2D image", bad.replace_with_tiffs({"slice_0001.tif": bad.PLANE})
    ),
    "TIFF stack with a gap in the numbering": _volume(
        "a gap in the numbering: slice_0002.tif, then slice_0004.tif",
        bad.replace_with_tiffs({f"slice_000{i}.tif": bad.PLANE for i in (1, 2, 4, 5)}),
    ),
    "TIFF slices of different shapes": _volume(
        "slices differ",
        bad.replace_with_tiffs(
            {"s_1.tif": bad.PLANE, "s_2.tif": bad.PLANE[:8], "s_3.tif": bad.PLANE}
        ),
    ),
    "HDF5 without its dataset (/exchange/data)": _volume(
        "/exchange/data is no such dataset (datasets: /entry/data 16x16x16)",
        bad.replace_with_hdf5({"entry/data": np.ones((16, 16, 16), np.uint16)}),
    ),
    "HDF5 dataset is 2D": _volume(
        "expected a 3D volume", bad.replace_with_hdf5({"exchange/data": bad.PLANE})
    ),
    "OME-Zarr levels disagree": _volume(
        "OME-Zarr levels disagree: level 1 (s1) has shape (8, 8, 3)",
        bad.replace_with_ome_zarr([(16, 16, 16), (8, 8, 3)]),
    ),
    # messages that never went through our producer: the consumer's own validation
    "hostile subject id ../../etc (raw message)": _raw("dti", "subject", subject="../../etc"),
    "subject id with a separator (raw message)": _raw("dti", "subject", subject="a/b"),
    "URL-encoded traversal in the input URI (raw message)": _raw(
        "dti", "percent-encoded", input_uri="s3://b/hcp/%2e%2e/%2e%2e/etc"
    ),
    "unknown pipeline (raw message)": _raw("nope", "pipeline"),
    "unknown parameter (raw message)": _raw("dti", "bogus", params={"bogus": 1}),
    "zero seeds per voxel (raw message)": _raw(
        "tractography", "seeds_per_voxel", params={"seeds_per_voxel": 0}
    ),
    "oversized parameter (raw message)": _raw(
        "tractography", "sh_order_max", params={"sh_order_max": 10**12}
    ),
    "NaN parameter (raw message)": _raw(
        "dti", "finite number", params={"b0_threshold": float("nan")}
    ),
}


@pytest.fixture(scope="module")
def catalogue_consumer(
    redis_server: EmbeddedRedis, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """A consumer whose jobs use an existing Dask cluster (real scheduler and worker processes,
    ``tcp://``): most cases stop before any cluster is touched, and the few that are bad only
    inside their voxels cost a connection instead of a LocalCluster start each."""
    folder = tmp_path_factory.mktemp("catalogue")
    with dask_cluster_processes(folder, n_workers=1) as address:
        env = consumer_env(redis_server.url, s3_endpoint, VOXFLEET_DEFAULT_CLUSTER=address)
        with running_consumer(env, folder / "consumer.log") as process:
            yield process


def _input_for(
    case: str, spec: Case, good_subject: Path, good_volume: Path, root: Path, bucket: str, s3: str
) -> str:
    folder = root / f"case-{abs(hash(case)) % 10**8}"
    folder.mkdir()
    if spec.volume:
        path = folder / "v.zarr"
        bad.write_volume(path)
        if spec.mutate is not None:
            spec.mutate(path)
        return str(path)
    subject = bad.copy_subject(good_subject, folder, "100307")
    assert spec.mutate is not None
    spec.mutate(subject)
    if spec.on_s3:
        return upload_dir(subject, bucket, f"{folder.name}/100307", s3)
    return str(subject)


@dataclass
class Outcome:
    job_id: str
    record: dict[str, Any]
    seconds: float  # from enqueue to the final state (the consumer takes cases one by one)


@pytest.fixture(scope="module")
def outcomes(
    catalogue_consumer: subprocess.Popen[bytes],
    redis_server: EmbeddedRedis,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    """Enqueue every consumer case at once, then wait for all of them."""
    root = tmp_path_factory.mktemp("bad-inputs")
    settings = Settings(broker_url=redis_server.url, s3_endpoint_url=s3_endpoint)  # type: ignore[arg-type]
    import boto3

    bucket = f"vf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    good_subject = bad.write_subject(root / "good")
    good_volume = bad.write_volume(root / "good.zarr")
    results = str(root / "results")
    jobs: dict[str, str] = {}
    started: dict[str, float] = {}
    for name, case in CONSUMER_CASES.items():
        started[name] = time.monotonic()
        if case.raw is not None:
            jobs[name] = raw_task(settings, case.raw)
            continue
        uri = _input_for(name, case, good_subject, good_volume, root, bucket, s3_endpoint)
        spec = JobSpec(
            pipeline=case.pipeline, input_uri=uri, results_uri=results, params=case.params
        )  # type: ignore[arg-type]
        submit([spec], settings)
        jobs[name] = spec.job_id
    finals = wait_for(list(jobs.values()), settings, timeout_s=900)
    now = time.monotonic()
    return {
        name: Outcome(job_id, finals[job_id], now - started[name]) for name, job_id in jobs.items()
    }


def _dead_letters(settings_url: str) -> dict[str, dict[str, Any]]:
    return {d["job_id"]: d for d in Ledger.from_url(settings_url, 60).dead_letters(5000)}


# The first case pays for the module's set-up: a Dask cluster, a consumer, and every case run
# (seconds each on a quiet machine; minutes in all on a machine shared by many test runs).
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("case", list(CONSUMER_CASES))
def test_consumer_answers_bad_input_with_one_line(
    case: str, outcomes: dict[str, Outcome], redis_server: EmbeddedRedis
) -> None:
    spec = CONSUMER_CASES[case]
    outcome = outcomes[case]
    rec = outcome.record
    reason = rec.get("reason", "")
    attempts = int(rec.get("attempts", 0))
    rejected_by = "jobspec" if spec.raw is not None else "consumer"
    record(
        "bad_input",
        case,
        answer=reason,
        state=rec.get("state"),
        attempts=attempts,
        rejected_by=rejected_by,
        pipeline=spec.pipeline,
    )
    assert rec["state"] == "failed", rec
    assert reason and "\n" not in reason and len(reason) <= 400, reason
    assert spec.needle.lower() in reason.lower(), reason
    assert "Traceback" not in reason
    # Run at most once: a spec rejected before running never counts an attempt.
    assert attempts == (0 if spec.raw is not None else 1), rec
    assert outcome.job_id in _dead_letters(redis_server.url), "no dead-letter record"


def test_corrupt_chunk_names_the_cause(outcomes: dict[str, Outcome]) -> None:
    """A chunk that does not decode fails in a Dask worker, not in load: the reason must still
    say what broke, not just an exception class."""
    reason = outcomes["corrupt chunk bytes"].record["reason"]
    assert "chunk" in reason.lower() or "decod" in reason.lower() or "zstd" in reason.lower(), (
        reason
    )


def test_no_retry_loop_and_the_consumer_survives(
    outcomes: dict[str, Outcome],
    catalogue_consumer: subprocess.Popen[bytes],
    redis_server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert catalogue_consumer.poll() is None, "the consumer died"
    # Nothing waits for a retry or a redelivery: the queue and Celery's unacked hash are empty.
    assert client.llen("voxfleet") == 0
    assert client.hlen("unacked") == 0
    states = {o.record["state"] for o in outcomes.values()}
    assert states == {"failed"}, states


# --- the CLI refuses before enqueueing --------------------------------------------------------


@pytest.fixture
def cli_broker(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """The CLI's settings point at a database of its own, which must stay empty."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setattr(shared.settings, "_active", Settings(broker_url=url))  # type: ignore[arg-type]
    return client


def _csv(tmp_path: Path, body: str | bytes, name: str = "subjects.csv") -> str:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return str(path)


def _enqueue(*extra: str, pipeline: str = "dti", uri: str = "s3://b/hcp/100307") -> Callable:
    return lambda tmp: ["enqueue", pipeline, uri, "--results", str(tmp / "out"), *extra]


def _campaign(body: str | bytes, *extra: str, name: str = "c1", suffix: str = "csv") -> Callable:
    return lambda tmp: [
        "campaign",
        "submit",
        name,
        "dti",
        "--inputs",
        _csv(tmp, body, f"subjects.{suffix}"),
        "--results",
        str(tmp / "out"),
        *extra,
    ]


SECRET = "AKIAEXAMPLE:wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
CLI_CASES: dict[str, tuple[str, Callable[[Path], list[str]], str]] = {
    "unknown pipeline": ("-", _enqueue(pipeline="nope"), "pipeline"),
    "unknown parameter": ("dti", _enqueue("--param", "bogus=1"), "bogus"),
    "parameter without a value": ("dti", _enqueue("--param", "fit_method"), "NAME=VALUE"),
    "bad parameter value": ("dti", _enqueue("--param", "fit_method=MAGIC"), "fit_method"),
    "oversized parameter": (
        "tractography",
        _enqueue("--param", "seeds_per_voxel=1000000", pipeline="tractography"),
        "seeds_per_voxel",
    ),
    "zero seeds per voxel": (
        "tractography",
        _enqueue("--param", "seeds_per_voxel=0", pipeline="tractography"),
        "seeds_per_voxel",
    ),
    "NaN parameter": ("dti", _enqueue("--param", "b0_threshold=NaN"), "finite"),
    "infinite parameter": (
        "microstructure",
        _enqueue("--param", "gamma=Infinity", pipeline="microstructure", uri="s3://b/v.zarr"),
        "finite",
    ),
    "sigma out of range": (
        "microstructure",
        _enqueue("--param", "sigmas=1,1000", pipeline="microstructure", uri="s3://b/v.zarr"),
        "sigmas",
    ),
    "wrong parameter type": ("dti", _enqueue("--param", "chunks=[1,2]"), "chunks"),
    "'..' in the input URI": ("dti", _enqueue(uri="s3://b/hcp/../../etc"), ".."),
    "URL-encoded traversal in the input URI": (
        "dti",
        _enqueue(uri="s3://b/hcp/%2E%2E/%2e%2e/etc"),
        "percent-encoded",
    ),
    "credentials in the input URI": ("dti", _enqueue(uri=f"s3://{SECRET}@b/hcp/1"), "credentials"),
    "control character in the input URI": ("dti", _enqueue(uri="s3://b/hcp/1\nX"), "control"),
    "hostile subject id from the URI": ("dti", _enqueue(uri="s3://b/hcp/$(reboot)"), "subject"),
    "oversized URI": ("dti", _enqueue(uri="s3://b/" + "a" * 2000), "1024"),
    "unsupported URI scheme": ("dti", _enqueue(uri="http://evil.example/x"), "s3://"),
    "bad cluster spec": ("dti", _enqueue("--cluster", "tcp://evil host:1"), "cluster"),
    "hostile campaign name": (
        "dti",
        _campaign("input\ns3://b/hcp/1\n", name="../etc"),
        "campaign name",
    ),
    "manifest without an input column": ("dti", _campaign("path\ns3://b/hcp/1\n"), "input"),
    "manifest row with extra fields": (
        "dti",
        _campaign("input,subject\ns3://b/hcp/1,s1\ns3://b/hcp/2,s2,extra\n"),
        "line 3: 3 fields",
    ),
    "manifest row with a bad parameter value": (
        "dti",
        _campaign("input,fit_method\ns3://b/hcp/1,WLS\ns3://b/hcp/2,MAGIC\n"),
        "line 3",
    ),
    "manifest column that is no parameter": (
        "dti",
        _campaign("input,bogus\ns3://b/hcp/1,1\n"),
        "bogus",
    ),
    "manifest row with a hostile subject": (
        "dti",
        _campaign("input,subject\ns3://b/hcp/1,../../etc\n"),
        "subject id",
    ),
    "manifest row with an encoded traversal": (
        "dti",
        _campaign("input\ns3://b/hcp/%2e%2e\n"),
        "percent-encoded",
    ),
    "manifest with the same job twice": (
        "dti",
        _campaign("input\ns3://b/hcp/1\ns3://b/hcp/1\n"),
        "same job as line 2",
    ),
    "manifest with a header only": ("dti", _campaign("input\n"), "no inputs"),
    "manifest not UTF-8": ("dti", _campaign(b"input\n\xff\xfe\xfa\n"), "UTF-8"),
    "manifest with an unterminated quote": (
        "dti",
        _campaign('input\n"s3://b/hcp/1\n'),
        "line",
    ),
    "manifest with a NUL byte": ("dti", _campaign("input\ns3://b/\x00hcp/1\n"), "line 2"),
    "text manifest with '..'": ("dti", _campaign("/data/../etc/1\n", suffix="txt"), ".."),
    "manifest that does not exist": (
        "dti",
        lambda tmp: [
            "campaign",
            "submit",
            "c1",
            "dti",
            "--inputs",
            str(tmp / "nope.csv"),
            "--results",
            str(tmp / "out"),
        ],
        "not found",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_rejects_before_enqueueing(case: str, cli_broker: redis.Redis, tmp_path: Path) -> None:
    pipeline, argv, needle = CLI_CASES[case]
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, argv(tmp_path))
    seconds = time.perf_counter() - t0
    answer = result.stderr.strip()
    record(
        "bad_input",
        f"CLI: {case}",
        answer=answer,
        state="rejected",
        attempts=0,
        rejected_by="cli",
        pipeline=pipeline,
        exit_code=result.exit_code,
        seconds=round(seconds, 3),
    )
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert answer.startswith("error:") and "\n" not in answer, answer
    assert needle.lower() in answer.lower(), answer
    assert "Traceback" not in result.output
    assert SECRET.split(":")[1] not in answer  # never echo a credential back
    assert cli_broker.dbsize() == 0, "the CLI wrote to the broker"
    assert not (tmp_path / "out").exists(), "the CLI wrote to the results store"
