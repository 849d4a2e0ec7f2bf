"""Real servers for the whole suite: a Redis-protocol server and an S3 API over HTTP."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from producer.server import EmbeddedRedis, free_port
from shared.settings import Settings

# Credentials for the S3 test server only; set before any boto3 client exists.
os.environ.update(
    AWS_ACCESS_KEY_ID="voxfleet-test-key",
    AWS_SECRET_ACCESS_KEY="voxfleet-test-secret",
    AWS_DEFAULT_REGION="us-east-1",
)


def pytest_configure(config: pytest.Config) -> None:
    # Evidence for docs/reliability.md goes to build/ only under `make reliability`, which
    # names the log; any other session writes to a fresh log of its own and leaves it alone.
    if "VOXFLEET_RELIABILITY_LOG" not in os.environ:
        folder = tempfile.mkdtemp(prefix="voxfleet-evidence-")
        os.environ["VOXFLEET_RELIABILITY_LOG"] = str(Path(folder) / "reliability.jsonl")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"vf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(redis_server: EmbeddedRedis, s3_endpoint: str) -> Settings:
    return Settings(
        broker_url=redis_server.url,  # type: ignore[arg-type]
        s3_endpoint_url=s3_endpoint,
        s3_max_attempts=2,
        default_cluster="local:2",
    )


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root
