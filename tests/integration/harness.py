"""Helpers for integration tests: consumer processes and S3 uploads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from producer.local_consumer import running_consumer

__all__ = [
    "consumer_env",
    "dask_cluster_processes",
    "running_consumer",
    "upload_dir",
    "voxfleet",
]


def consumer_env(redis_url: str, s3_endpoint: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "VOXFLEET_BROKER_URL": redis_url,
        "VOXFLEET_S3_ENDPOINT_URL": s3_endpoint,
        "VOXFLEET_S3_MAX_ATTEMPTS": "2",
        "VOXFLEET_DEFAULT_CLUSTER": "local:2",
        "VOXFLEET_RETRY_BACKOFF_S": "0.5",
        "VOXFLEET_MAX_RETRIES": "2",
        **extra,
    }


def voxfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own, with ``env`` as its whole environment."""
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def upload_dir(local: Path, bucket: str, prefix: str, endpoint: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@contextmanager
def dask_cluster_processes(log_dir: Path, n_workers: int = 2) -> Iterator[str]:
    """A real ``dask scheduler`` and ``dask worker`` processes: an existing cluster that
    consumers reach through a ``tcp://`` spec (and never tear down)."""
    from distributed import Client

    from producer.server import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    procs = []
    with (log_dir / "dask.log").open("ab") as log:
        procs.append(
            subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--dashboard-address", ":0", "--no-show"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [dask, "worker", address, "--nworkers", str(n_workers), "--nthreads", "1",
                 "--no-dashboard", "--memory-limit", "4GiB"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    try:
        # Generous: on a host loaded to ~30 (2 cores) the scheduler took over 60 s to listen.
        with Client(address, timeout=240) as client:
            client.wait_for_workers(n_workers, timeout=240)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
