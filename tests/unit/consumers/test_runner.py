"""The Celery-free runner: commit, skip, and stopping at a stage boundary without a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.runner import execute
from producer.synth.hcp import write_subject
from shared.errors import Cancelled
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import LocalStore


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("in")
    write_subject(LocalStore(root), "100307", size="small", seed=3)
    return root / "100307"


def test_commit_then_skip(subject: Path, tmp_path: Path) -> None:
    spec = JobSpec(
        pipeline="dti", input_uri=str(subject), results_uri=str(tmp_path), cluster="local:1"
    )
    first = execute(spec, Settings())
    assert first.state == "done" and Path(first.manifest_uri).is_file()
    stages = first.timing["stages_s"]
    for stage in ("queue_wait", "load", "cluster_acquire", "dti", "publish", "commit"):
        assert stage in stages
    again = execute(spec.model_copy(update={"job_id": "second"}), Settings())
    assert again.state == "skipped" and again.manifest_uri == first.manifest_uri


def test_cancel_at_a_stage_boundary_leaves_nothing(subject: Path, tmp_path: Path) -> None:
    spec = JobSpec(
        pipeline="dti", input_uri=str(subject), results_uri=str(tmp_path), cluster="local:1"
    )

    def cancel_at_write(stage: str) -> None:
        if stage == "write":
            raise Cancelled(f"cancelled before stage {stage}")

    with pytest.raises(Cancelled, match="write"):
        execute(spec, Settings(), check=cancel_at_write)
    # No manifest, and the attempt's folder is gone: nothing half-published.
    assert list(LocalStore(tmp_path).list()) == []
