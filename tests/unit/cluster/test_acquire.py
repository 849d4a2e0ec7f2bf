"""Acquiring a real LocalCluster: sized as asked, always torn down, timings recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client

import cluster
from shared.errors import ConfigError
from shared.settings import Settings
from shared.timing import StageTimer

REPO = Path(__file__).resolve().parents[3]


def test_local_cluster_is_torn_down_on_success_and_on_error() -> None:
    settings = Settings()
    timer = StageTimer()
    with cluster.acquire("local:2", settings, timer) as client:
        assert isinstance(client, Client)
        assert client.submit(sum, [1, 2]).result() == 3
        seen = client
    assert seen.status == "closed"
    info = timer.extra["cluster"]
    assert info["backend"] == "local" and info["workers"] == 2 and info["threads"] == 2
    assert timer.stages["cluster_acquire"] > 0 and "cluster_release" in timer.stages

    with (
        pytest.raises(RuntimeError, match="pipeline broke"),
        cluster.acquire("local:1", settings) as client,
    ):
        scheduler = client.scheduler.address
        raise RuntimeError("pipeline broke")
    assert client.status == "closed"
    # Nothing is listening on the old scheduler any more.
    with pytest.raises(OSError):
        Client(scheduler, timeout="2s")


@pytest.mark.parametrize("spec", ["yarn", "local:0", "local:x", "coiled-ish"])
def test_bad_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="cluster spec"):
        cluster.backend_for(spec, Settings())


def test_starting_overlaps_work_and_tears_down_when_the_job_fails_early() -> None:
    timer = StageTimer()
    with (
        pytest.raises(ValueError, match="bad input"),
        cluster.starting("local:1", Settings(), timer, warm_modules=["json"]),
    ):
        raise ValueError("bad input")  # the inputs failed to load while the cluster started
    # The start that was in flight finished and was torn down; nothing was waited on.
    assert timer.stages["cluster_wait"] == 0.0
    assert timer.extra["cluster"]["backend"] == "local"
    assert "cluster_release" in timer.stages


def test_warm_modules_are_imported_on_every_worker() -> None:
    with cluster.acquire("local:2", Settings(), warm_modules=["colorsys"]) as client:
        loaded = client.run(lambda: __import__("sys").modules.get("colorsys") is not None)
    assert list(loaded.values()) == [True, True]


def test_unreachable_scheduler_is_a_cluster_error() -> None:
    from producer.server import free_port
    from shared.errors import ClusterError

    settings = Settings(scheduler_connect_timeout_s=1)
    with (
        pytest.raises(ClusterError, match="could not acquire"),
        cluster.acquire(f"tcp://127.0.0.1:{free_port()}", settings),
    ):
        pass


PROBE = """
import json, os, sys
import cluster
from shared.settings import Settings

def probe():
    import os
    return {"ppid": os.getppid(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}

seen = []
for _ in range(2):  # two jobs' clusters in one consumer process
    settings = Settings(local_start_method=sys.argv[1])
    with cluster.acquire("local:2", settings, warm_modules=["vf_probe"]) as client:
        seen.extend(client.run(probe).values())
print(json.dumps({"me": os.getpid(), "workers": seen}))
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_local_workers_start_with_the_pipeline_stack_imported_once(
    tmp_path: Path, method: str
) -> None:
    """forkserver: the pipeline's modules are imported once per consumer process, by the server
    every worker of every job is forked from; spawn imports them in every worker again. Either
    way the workers run one BLAS/OpenMP thread and without Dask's malloc trim threshold."""
    (tmp_path / "vf_probe.py").write_text(
        "import os\nwith open(os.environ['VF_PROBE_LOG'], 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
    )
    log = tmp_path / "imports.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "VF_PROBE_LOG": str(log),
    }
    env.pop("MALLOC_TRIM_THRESHOLD_", None)  # as a fresh consumer has it
    run = subprocess.run(
        [sys.executable, "-c", PROBE, method], env=env, capture_output=True, text=True,
        timeout=240, check=True,
    )  # fmt: skip
    report = json.loads(run.stdout.strip().splitlines()[-1])
    importers = log.read_text().split()
    workers = report["workers"]
    assert len(workers) == 4
    assert all(w["omp"] == "1" and w["trim"] is None for w in workers), workers
    if method == "forkserver":
        (server,) = {w["ppid"] for w in workers}  # one server forked all four
        assert server != report["me"]
        assert importers == [str(server)]  # and it alone imported the module, once
    else:
        assert {w["ppid"] for w in workers} == {report["me"]}
        assert len(importers) == 4  # every worker of both clusters imported it
