"""Helpers for integration tests: consumer processes and S3 uploads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from consumers.app import make_app
from shared.settings import Settings


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


@contextmanager
def running_consumer(
    env: dict[str, str], log_path: Path, *, name: str | None = None, ready_timeout_s: float = 90
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``voxfleet worker``, wait until it answers a ping, stop it on exit."""
    name = name or f"test-{uuid.uuid4().hex[:6]}"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "producer",
                "worker",
                "--loglevel=INFO",
                f"--hostname={name}@%h",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    settings = Settings(broker_url=env["VOXFLEET_BROKER_URL"])  # type: ignore[arg-type]
    app = make_app(settings)
    deadline = time.monotonic() + ready_timeout_s
    try:
        while not any(name in host for reply in app.control.ping(timeout=0.5) for host in reply):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"consumer {name} did not start:\n{log_path.read_text()[-3000:]}"
                )
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        app.close()


def upload_dir(local: Path, bucket: str, prefix: str, endpoint: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"
