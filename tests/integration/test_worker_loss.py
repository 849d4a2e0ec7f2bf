"""A Dask worker process killed mid-stage does not fail the job, and the output is identical."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from distributed import Client

from consumers.runner import execute
from producer.synth.hcp import write_subject
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import LocalStore
from tests.integration.harness import dask_cluster_processes


def _fa(manifest_uri: str) -> np.ndarray:
    job = Path(manifest_uri).parent
    return np.asarray(nib.load(next(job.glob("*/fa.nii.gz"))).dataobj)


def test_killed_worker_mid_stage_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_subject(LocalStore(tmp_path / "in"), "100307", size="small", seed=5)
    subject = tmp_path / "in" / "100307"
    settings = Settings()
    with dask_cluster_processes(tmp_path) as address:
        # 64 chunks keep the stage busy long enough to kill a worker in the middle of it.
        params = {"chunks": 64}
        reference = execute(
            JobSpec(pipeline="dti", input_uri=str(subject), results_uri=str(tmp_path / "ref"),
                    cluster=address, params=params),
            settings,
        )  # fmt: skip
        with Client(address, timeout=30) as watcher:
            pids = watcher.run(os.getpid)
            killed: list[int] = []

            def kill_when_busy() -> None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    busy = [w for w, tasks in watcher.processing().items() if tasks]
                    if any("fit_chunk" in key for w in busy for key in watcher.processing()[w]):
                        victim = pids[busy[0]]
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)
                        return
                    time.sleep(0.005)

            thread = threading.Thread(target=kill_when_busy, daemon=True)
            thread.start()
            outcome = execute(
                JobSpec(pipeline="dti", input_uri=str(subject),
                        results_uri=str(tmp_path / "killed"), cluster=address, params=params),
                settings,
            )  # fmt: skip
            thread.join(timeout=5)
        assert killed, "no worker was killed while the stage ran"
    # The stage lost parts with the worker and sent them again (not a whole-job retry).
    assert any("scattering them again" in r.getMessage() for r in caplog.records)
    assert outcome.state == "done"
    np.testing.assert_array_equal(_fa(outcome.manifest_uri), _fa(reference.manifest_uri))
