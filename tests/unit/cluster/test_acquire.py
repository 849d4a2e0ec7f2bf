"""Acquiring a real LocalCluster: sized as asked, always torn down, timings recorded."""

from __future__ import annotations

import pytest
from distributed import Client

import cluster
from shared.errors import ConfigError
from shared.settings import Settings
from shared.timing import StageTimer


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
