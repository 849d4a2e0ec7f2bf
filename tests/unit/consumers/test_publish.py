"""Commit semantics: one manifest per job, the loser of a race leaves nothing visible."""

from __future__ import annotations

from pathlib import Path

from consumers.publish import publish, remove_orphans, upload_all
from shared.jobspec import JobSpec
from shared.manifest import read_manifest
from shared.store import LocalStore


def test_two_attempts_race_and_exactly_one_commits(tmp_path: Path) -> None:
    results = LocalStore(tmp_path / "results")
    spec = JobSpec(pipeline="dti", input_uri="/data/hcp/100307", results_uri=str(results.root))
    job = results.child(spec.result_prefix)
    src = tmp_path / "fa.nii.gz"
    outcomes = []
    for attempt, payload in (("aaaa", b"first"), ("bbbb", b"second")):
        src.write_bytes(payload)
        files = upload_all(job.child(attempt), {"fa.nii.gz": src})
        outcomes.append(publish(results, spec, attempt, files, {"n": 1}, {"wall_s": 1.0}))

    first, second = outcomes
    assert first.committed and not second.committed
    assert second.manifest == first.manifest  # the loser reports the winner's manifest
    manifest = read_manifest(results, spec.result_prefix)
    assert manifest is not None and manifest.attempt == "aaaa"
    assert [f["key"] for f in manifest.files] == ["aaaa/fa.nii.gz", "aaaa/timing.json"]
    # The loser cleaned up after itself: only the winner's attempt folder remains.
    assert sorted(p.name for p in (results.root / spec.result_prefix).iterdir()) == [
        "aaaa",
        "manifest.json",
    ]
    assert job.get_bytes("aaaa/fa.nii.gz") == b"first"


def test_no_manifest_means_no_result(tmp_path: Path) -> None:
    results = LocalStore(tmp_path)
    spec = JobSpec(pipeline="dti", input_uri="/data/hcp/1", results_uri=str(tmp_path))
    results.child(spec.result_prefix).put_bytes("cccc/fa.nii.gz", b"orphan")
    assert read_manifest(results, spec.result_prefix) is None


def test_orphaned_attempts_are_removed_and_the_committed_one_kept(tmp_path: Path) -> None:
    results = LocalStore(tmp_path)
    spec = JobSpec(pipeline="dti", input_uri="/data/hcp/2", results_uri=str(tmp_path))
    job = results.child(spec.result_prefix)
    job.put_bytes("dead1/shards/sl-0000.trk", b"x" * 10)  # what SIGKILLed attempts left
    job.put_bytes("dead2/fa.nii.gz", b"y")
    src = tmp_path / "fa.nii.gz"
    src.write_bytes(b"good")
    files = upload_all(job.child("live"), {"fa.nii.gz": src})
    publication = publish(results, spec, "live", files, {}, {"wall_s": 1.0})
    assert remove_orphans(job, publication.manifest.attempt) == 2
    assert sorted(p.name for p in job.root.iterdir()) == ["live", "manifest.json"]
    assert remove_orphans(job, "live") == 0
