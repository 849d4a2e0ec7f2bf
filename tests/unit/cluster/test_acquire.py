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
