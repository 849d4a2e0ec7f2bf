"""Real consumer processes (``voxfleet worker``) against the session's Redis and S3 servers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.server import EmbeddedRedis
from producer.synth.hcp import write_subject
from shared.store import LocalStore
from tests.integration.harness import consumer_env, dask_cluster_processes, running_consumer

SUBJECT = "100307"


@pytest.fixture(scope="session")
def consumer(
    redis_server: EmbeddedRedis, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path_factory.mktemp("consumer") / "consumer.log"
    with running_consumer(consumer_env(redis_server.url, s3_endpoint), log) as process:
        yield process


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small synthetic HCP-layout subject on disk, shared by the session."""
    root = tmp_path_factory.mktemp("hcp")
    write_subject(LocalStore(root), SUBJECT, size="small", seed=7)
    return root / SUBJECT


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real scheduler and workers in processes of their own, for consumers to share."""
    with dask_cluster_processes(tmp_path_factory.mktemp("dask")) as address:
        yield address
