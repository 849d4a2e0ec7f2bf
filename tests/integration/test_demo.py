"""``voxfleet demo``, the newcomer's first command, end to end: its own Redis-protocol server,
a consumer subprocess, local Dask clusters, one subject through ``dti`` and one fiber phantom
through ``microstructure``; every job committed, the summary printed, nothing left running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil


def test_demo_runs_both_pipelines_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "producer", "demo", "--out", str(out), "--subjects", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        # A newcomer's shell: none of the suite's VOXFLEET_* settings; wide enough for the table.
        env={k: v for k, v in os.environ.items() if not k.startswith("VOXFLEET_")}
        | {"COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2/2 jobs done" in run.stdout, run.stdout
    assert "FA median" in run.stdout and " fibers, VF " in run.stdout, run.stdout

    manifests = sorted((out / "results").glob("*/*/*/manifest.json"))
    assert {m.parent.parent.name for m in manifests} == {"dti", "microstructure"}
    for manifest in manifests:
        files = json.loads(manifest.read_text())["files"]
        for entry in files:
            assert (manifest.parent / entry["key"]).stat().st_size == entry["bytes"]
    fibers = next(m for m in manifests if m.parent.parent.name == "microstructure")
    summary = json.loads(fibers.read_text())["summary"]
    truth_array = out / "inputs" / "ct" / "_truth" / "sample1.zarr"
    truth = json.loads((truth_array / "zarr.json").read_text())
    assert truth["node_type"] == "array"
    assert summary["fibers"] > 10 and 0.25 < summary["volume_fraction"] < 0.45

    # The server, the consumer and its cluster are gone with the demo: no process is left
    # that was started with the demo's broker URL or folder.
    port = re.search(r"127\.0\.0\.1:(\d+)", run.stdout)
    assert port, run.stdout
    left = [p for p in psutil.process_iter() if _started_by_demo(p, port[1], str(out))]
    # A worker the demo has already told to stop may take a moment to exit: join it, briefly.
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not [p.pid for p in alive]


def _started_by_demo(process: psutil.Process, port: str, out: str) -> bool:
    try:
        url = process.environ().get("VOXFLEET_BROKER_URL", "")
        return f":{port}/" in url or any(out in part for part in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
