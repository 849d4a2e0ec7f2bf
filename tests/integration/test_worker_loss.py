"""A Dask worker process killed mid-stage does not fail the job, and the output is identical."""

from __future__ import annotations

import json
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
from tests.faults.record import record
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
        resent = sum("scattering them again" in r.getMessage() for r in caplog.records)
    identical = np.array_equal(_fa(outcome.manifest_uri), _fa(reference.manifest_uri))
    job = Path(outcome.manifest_uri).parent
    manifest = json.loads(Path(outcome.manifest_uri).read_text())
    listed = {f["key"]: f["bytes"] for f in manifest["files"]}
    present = {
        p.relative_to(job).as_posix(): p.stat().st_size
        for p in job.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    record(
        "fault",
        "Dask worker process SIGKILLed mid-stage (tensor fit, 64 chunks)",
        injected=len(killed),
        lost=0 if outcome.state == "done" else 1,
        duplicates=len(list((tmp_path / "killed").rglob("manifest.json"))) - 1,
        partial_visible=sum(present.get(k) != size for k, size in listed.items())
        + len(present.keys() - listed.keys()),
        resend_rounds=resent,
        output_identical_to_unfaulted_run=identical,
        answer="the lost chunks were scattered again and resubmitted inside the stage; "
        "FA identical to an unfaulted run",
    )
    assert killed, "no worker was killed while the stage ran"
    # The stage lost parts with the worker and sent them again (not a whole-job retry).
    assert resent
    assert outcome.state == "done"
    assert identical
