"""Backends at voxfleet's boundary: Coiled (through a stand-in), SLURM (job script only), the
warm pool, and sizing. Coiled's real service is not reachable from here; these tests check the
arguments we pass and that we always close, nothing more."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cluster
from cluster.slurm import SlurmBackend
from shared.jobspec import ClusterSize
from shared.settings import Settings
from shared.timing import StageTimer

STANDINS = str(Path(__file__).resolve().parents[2] / "standins")


@pytest.fixture
def coiled_standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    monkeypatch.syspath_prepend(STANDINS)
    sys.modules.pop("coiled", None)
    import coiled

    coiled.EVENTS.clear()
    yield coiled.EVENTS
    sys.modules.pop("coiled", None)


LABELS = {"job_key": "0123456789abcdef" * 4, "job": "j1", "campaign": "hcp-v1", "pipeline": "dti"}


def test_coiled_arguments_tags_and_close_on_success(coiled_standin: list[dict[str, Any]]) -> None:
    settings = Settings(coiled_region="us-west-2", coiled_vm_types=["m6i.xlarge"])
    timer = StageTimer()
    size = ClusterSize(workers=3, threads=2, memory="8 GiB")
    with cluster.acquire("coiled", settings, timer, size=size, labels=LABELS) as client:
        assert client.submit(sum, [2, 3]).result() == 5
    create, close = coiled_standin
    assert create["event"] == "create" and close["event"] == "close"
    kwargs = create["kwargs"]
    assert kwargs["name"] == "voxfleet-0123456789abcdef"
    assert kwargs["n_workers"] == 3 and kwargs["worker_memory"] == "8 GiB"
    assert kwargs["worker_options"] == {"nthreads": 2}
    assert kwargs["worker_vm_types"] == ["m6i.xlarge"] and kwargs["region"] == "us-west-2"
    assert kwargs["tags"] == {
        "voxfleet-campaign": "hcp-v1",
        "voxfleet-job": "j1",
        "voxfleet-pipeline": "dti",
    }
    assert kwargs["shutdown_on_close"] is True
    assert kwargs["idle_timeout"] == "20 minutes" and kwargs["no_client_timeout"] == "10 minutes"
    info = timer.extra["cluster"]
    assert info["backend"] == "coiled" and info["cluster_id"] == 4242
    assert info["tags"]["voxfleet-campaign"] == "hcp-v1" and info["core_seconds"] > 0


def test_coiled_closes_on_pipeline_error(coiled_standin: list[dict[str, Any]]) -> None:
    with (
        pytest.raises(ValueError, match="dipy said no"),
        cluster.acquire("coiled", Settings(), labels=LABELS),
    ):
        raise ValueError("dipy said no")
    assert [e["event"] for e in coiled_standin] == ["create", "close"]


def test_coiled_is_not_started_for_inputs_that_fail_to_load(
    coiled_standin: list[dict[str, Any]],
) -> None:
    # The consumer loads inputs inside `starting`; a paid backend waits to be asked.
    with (
        pytest.raises(ValueError, match="bad input"),
        cluster.starting("coiled", Settings(), labels=LABELS),
    ):
        raise ValueError("bad input")
    assert coiled_standin == []


def test_coiled_missing_package_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.errors import ClusterError, ConfigError

    monkeypatch.setitem(sys.modules, "coiled", None)  # import fails
    with (
        pytest.raises((ConfigError, ClusterError), match=r"voxfleet\[coiled\]"),
        cluster.acquire("coiled", Settings(), labels=LABELS),
    ):
        pass


def test_slurm_job_script_carries_the_settings() -> None:
    from dask_jobqueue.slurm import SLURMCluster

    settings = Settings(
        slurm_queue="compute", slurm_account="lab42", slurm_walltime="04:00:00",
        slurm_job_extra=["--constraint=avx2"],
    )  # fmt: skip
    backend = SlurmBackend(settings, ClusterSize(threads=4, memory="32GB"), LABELS)
    slurm = SLURMCluster(**backend.cluster_kwargs())
    try:
        script = slurm.job_script()
    finally:
        slurm.close()
    for line in (
        "#SBATCH -p compute",
        "#SBATCH -A lab42",
        "#SBATCH -t 04:00:00",
        "#SBATCH --constraint=avx2",
        "#SBATCH --cpus-per-task=4",
        "--nthreads 4",
    ):
        assert line in script, line  # fmt: skip
    assert "#SBATCH -J voxfleet-0123456789ab" in script


def test_warm_pool_reuses_within_a_campaign_only() -> None:
    settings = Settings()
    pool = cluster.WarmPool(idle_s=60)
    addresses = []
    for campaign in ("a", "a", "b"):
        timer = StageTimer()
        with cluster.starting("local:1", settings, timer, pool=pool, pool_key=campaign) as pending:
            addresses.append(pending.client().scheduler.address)
        addresses.append(timer.extra["cluster"]["warm"])
    assert addresses[0] == addresses[2] and addresses[1:4:2] == [False, True]
    assert addresses[4] != addresses[0] and addresses[5] is False
    assert pool.holding
    pool.close()
    assert not pool.holding


def test_warm_pool_idle_timer_tears_down() -> None:
    import time

    pool = cluster.WarmPool(idle_s=0.5)
    with cluster.starting("local:1", Settings(), pool=pool, pool_key="c") as pending:
        client = pending.client()
    deadline = time.monotonic() + 30
    while pool.holding or client.status != "closed":
        assert time.monotonic() < deadline, "idle cluster was not torn down"
        time.sleep(0.1)


def test_local_size_from_the_job() -> None:
    timer = StageTimer()
    with cluster.acquire("local", Settings(), timer, size=ClusterSize(workers=1, threads=2)):
        pass
    assert timer.extra["cluster"]["workers"] == 1 and timer.extra["cluster"]["threads"] == 2
