"""Consumers as local subprocesses (``voxfleet worker``): for the demo, tests and benchmarks."""

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

from consumers.app import make_app
from shared.errors import ConfigError
from shared.settings import Settings


def start_consumer(env: dict[str, str], log_path: Path, name: str) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
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
            # Its own process group: a Ctrl-C meant for the parent reaches the parent only,
            # which then stops the consumer in order; and a SIGKILL can take its workers along.
            start_new_session=True,
        )


def wait_until_ready(
    process: subprocess.Popen[bytes], name: str, broker_url: str, log_path: Path, timeout_s: float
) -> None:
    """Until the consumer answers a Celery ping (each ping waits up to 0.5 s for replies)."""
    app = make_app(Settings(broker_url=broker_url))
    deadline = time.monotonic() + timeout_s
    try:
        while not any(name in host for reply in app.control.ping(timeout=0.5) for host in reply):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:] if log_path.exists() else ""
                raise ConfigError(f"consumer {name} did not start:\n{tail}")
    finally:
        app.close()


def stop_consumer(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM (the job in hand may finish), then SIGKILL the whole group after the grace."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_consumer(
    env: dict[str, str],
    log_path: Path,
    *,
    name: str | None = None,
    ready_timeout_s: float = 90,
    grace_s: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    """A consumer that is ready to take jobs inside the block and stopped after it."""
    name = name or f"consumer-{uuid.uuid4().hex[:6]}"
    process = start_consumer(env, log_path, name)
    try:
        wait_until_ready(process, name, env["VOXFLEET_BROKER_URL"], log_path, ready_timeout_s)
        yield process
    finally:
        stop_consumer(process, grace_s)
