"""``campaign submit --inputs ROOT`` over each diffusion layout: one job per series, named by its
id; a series that cannot run is left out by name while the rest plans."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

import shared.settings
from producer.campaign import PlanError, plan_campaign
from producer.cli import app
from producer.server import EmbeddedRedis
from producer.synth.bids import BidsSubject, write_bids
from producer.synth.hcp import write_subjects
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.store import LocalStore, open_store

RAW = [
    BidsSubject("01", sessions=("1", "2")),
    BidsSubject("02", runs=2),
    BidsSubject("03", broken="no-bval"),
    BidsSubject("04", broken="no-dwi"),
]
RAW_SERIES = ["sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2"]
QSI = [BidsSubject("01", runs=2), BidsSubject("02", sessions=("a",))]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bids")
    write_bids(LocalStore(root), RAW, "small")
    return root


@pytest.fixture(scope="module")
def qsiprep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qsiprep")
    write_bids(LocalStore(root), QSI, "small", layout="qsiprep")
    return root


@pytest.fixture(scope="module")
def hcp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hcp")
    write_subjects(LocalStore(root), ["100307", "100408"], "small")
    return root


def test_raw_bids_is_one_job_per_series_and_broken_subjects_are_left_out(raw: Path) -> None:
    plan = plan_campaign("c1", "tractography", str(raw), str(raw.parent / "out"), {}, Settings())
    assert plan.found_by == "bids"
    jobs = {spec.subject: spec.input_uri for spec in plan.to_enqueue}
    assert sorted(jobs) == RAW_SERIES
    assert jobs["sub-01_ses-2"] == f"{raw}/sub-01/ses-2/dwi/sub-01_ses-2_dwi.nii.gz"
    assert jobs["sub-02_run-1"] == f"{raw}/sub-02/dwi/sub-02_run-1_dwi.nii.gz"
    assert len(plan.unusable) == 2
    no_bval, no_dwi = sorted(plan.unusable)
    assert no_bval.startswith("sub-03: no .bval") and no_dwi == "sub-04: no diffusion data"


def test_qsiprep_series_are_the_preprocessed_dwi(qsiprep: Path) -> None:
    plan = plan_campaign("c1", "dti", str(qsiprep), str(qsiprep.parent / "out"), {}, Settings())
    assert plan.found_by == "qsiprep" and plan.unusable == []
    jobs = {spec.subject: spec.input_uri for spec in plan.to_enqueue}
    assert sorted(jobs) == ["sub-01_run-1", "sub-01_run-2", "sub-02_ses-a"]
    assert jobs["sub-02_ses-a"] == (
        f"{qsiprep}/sub-02/ses-a/dwi/sub-02_ses-a_space-T1w_desc-preproc_dwi.nii.gz"
    )


def test_hcp_subjects_are_their_folders(hcp: Path) -> None:
    plan = plan_campaign("c1", "dti", str(hcp), str(hcp.parent / "out"), {}, Settings())
    assert plan.found_by == "hcp"
    assert [(s.subject, s.input_uri) for s in plan.to_enqueue] == [
        ("100307", f"{hcp}/100307"),
        ("100408", f"{hcp}/100408"),
    ]


def test_layout_names_what_detection_cannot_see(raw: Path, hcp: Path, tmp_path: Path) -> None:
    # A BIDS dataset without its dataset_description.json is not detected as BIDS...
    bare = tmp_path / "bare"
    shutil.copytree(raw, bare, ignore=shutil.ignore_patterns("dataset_description.json"))
    with pytest.raises(InvalidInput, match=r"name one with --layout \(qsiprep\|bids\|hcp\)$"):
        plan_campaign("c1", "dti", str(bare), str(tmp_path / "out"), {}, Settings())
    # ... but --layout bids reads it.
    plan = plan_campaign(
        "c1", "dti", str(bare), str(tmp_path / "out"), {}, Settings(), layout="bids"
    )
    assert sorted(s.subject for s in plan.to_enqueue) == RAW_SERIES and len(plan.unusable) == 2
    # A layout that does not fit the data finds nothing, in one line.
    with pytest.raises(InvalidInput, match="no hcp series found"):
        plan_campaign("c1", "dti", str(raw), str(tmp_path / "out"), {}, Settings(), layout="hcp")
    with pytest.raises(InvalidInput, match="no bids series found"):
        plan_campaign("c1", "dti", str(hcp), str(tmp_path / "out"), {}, Settings(), layout="bids")


def test_a_dataset_with_nothing_usable_is_one_error(qsiprep: Path, tmp_path: Path) -> None:
    # Raw BIDS over QSIPrep derivatives: every subject has files, none a raw DWI series.
    with pytest.raises(InvalidInput) as caught:
        plan_campaign("c1", "dti", str(qsiprep), str(tmp_path), {}, Settings(), layout="bids")
    assert not isinstance(caught.value, PlanError)
    message = str(caught.value)
    assert message == (
        f"nothing usable below {qsiprep} (bids): sub-01: no diffusion data (and 1 more)"
    )


def test_bad_manifest_rows_still_stop_the_submit(raw: Path, tmp_path: Path) -> None:
    good = f"{raw}/sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz"
    (tmp_path / "m.csv").write_text(f"input,fit_method\n{good},WLS\n{good},MAGIC,x\n")
    with pytest.raises(PlanError, match="line 3: 3 fields"):
        plan_campaign("c1", "dti", str(tmp_path / "m.csv"), str(tmp_path), {}, Settings())
    # A manifest row's subject is derived from its BIDS file name, as a listing names it.
    (tmp_path / "m.txt").write_text(f"{good}\n")
    plan = plan_campaign("c1", "dti", str(tmp_path / "m.txt"), str(tmp_path), {}, Settings())
    assert [s.subject for s in plan.to_enqueue] == ["sub-01_ses-1"]


def _submit(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["campaign", "submit", "c1", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_dry_run_shows_jobs_and_unusable_series(raw: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    code, stdout, stderr = _submit("tractography", "--inputs", str(raw), "--results", out,
                                   "--dry-run")  # fmt: skip
    assert code == 0, stderr
    assert "4 to enqueue, 0 skipped, 2 unusable (bids; dry run" in " ".join(stdout.split())
    lines = stderr.splitlines()
    assert lines[0] == "2 of 6 inputs unusable, left out:"
    assert lines[1].startswith("  sub-03: no .bval") and lines[2] == "  sub-04: no diffusion data"

    code, stdout, _ = _submit("tractography", "--inputs", str(raw), "--results", out,
                              "--dry-run", "--json")  # fmt: skip
    outcome = json.loads(stdout)
    assert (outcome["to_enqueue"], outcome["found_by"], len(outcome["unusable"])) == (4, "bids", 2)


def test_cli_submit_enqueues_the_usable_and_keeps_the_rest_in_the_plan(
    raw: Path, tmp_path: Path, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"inputs-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(shared.settings, "_active", Settings(broker_url=redis_server.url))
    out = tmp_path / "out"
    code, stdout, stderr = _submit("dti", "--inputs", str(raw), "--results", str(out),
                                   "--queue", queue, "--json")  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["enqueued"] == 4
    assert redis.Redis.from_url(redis_server.url).llen(queue) == 4
    saved = json.loads((out / "_campaigns" / "c1.json").read_text())
    assert saved["found_by"] == "bids" and len(saved["unusable"]) == 2
    assert sorted(job["subject"] for job in saved["jobs"]) == RAW_SERIES


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("dti", "--layout", "nope"), "error: unknown layout 'nope' (have: qsiprep, bids, hcp)"),
        (("dti", "--marker", "zarr.json"), "error: --marker is not for dti"),
        (("microstructure", "--layout", "bids"), "error: --layout is not for microstructure"),
    ],
)
def test_cli_listing_options_fail_in_one_line(
    raw: Path, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    code, _, stderr = _submit(*args, "--inputs", str(raw), "--results", str(tmp_path), "--dry-run")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(needle), stderr


def test_a_bids_dataset_on_s3(bucket: str, s3_endpoint: str) -> None:
    settings = Settings(s3_endpoint_url=s3_endpoint)
    root = f"s3://{bucket}/ds000001"
    write_bids(open_store(root, settings), [RAW[1], RAW[3]], "small")
    plan = plan_campaign("c1", "dti", root, f"s3://{bucket}/out", {}, settings)
    assert plan.found_by == "bids" and plan.unusable == ["sub-04: no diffusion data"]
    assert [(s.subject, s.input_uri) for s in plan.to_enqueue] == [
        ("sub-02_run-1", f"{root}/sub-02/dwi/sub-02_run-1_dwi.nii.gz"),
        ("sub-02_run-2", f"{root}/sub-02/dwi/sub-02_run-2_dwi.nii.gz"),
    ]
