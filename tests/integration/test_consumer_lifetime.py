"""`voxfleet worker --max-jobs/--idle-exit` and the heartbeat behind `voxfleet health`, on real
consumer processes and a real Redis-protocol server: what the KEDA ScaledJob and the image's
HEALTHCHECK rely on (infra/k8s/keda/, infra/Dockerfile)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from consumers.app import make_app
from consumers.ledger import Ledger
from producer.server import EmbeddedRedis
from shared.jobspec import TASK_NAME
from shared.settings import Settings
from tests.integration.harness import consumer_env


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "producer", "worker", "--loglevel=INFO", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer", "health", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "consumer never wrote its heartbeat"
        time.sleep(0.2)


def _env(redis_server: EmbeddedRedis, s3_endpoint: str, heartbeat: Path) -> dict[str, str]:
    return consumer_env(
        redis_server.url,
        s3_endpoint,
        VOXFLEET_HEARTBEAT_FILE=str(heartbeat),
        VOXFLEET_HEARTBEAT_INTERVAL_S="1",
    )


def test_max_jobs_one_takes_one_message_and_exits_cleanly(
    redis_server: EmbeddedRedis, s3_endpoint: str, tmp_path: Path
) -> None:
    queue = f"lifetime-{uuid.uuid4().hex[:8]}"
    heartbeat = tmp_path / "hb" / "heartbeat.json"
    env = _env(redis_server, s3_endpoint, heartbeat)
    log = tmp_path / "consumer.log"
    process = _start(env, log, f"--queue={queue}", "--max-jobs=1", "--idle-exit=300")
    try:
        _wait_for_file(heartbeat, process, log)
        alive = _health(env)
        assert alive.returncode == 0, alive.stderr
        assert json.loads(alive.stdout)["healthy"] is True

        # Two jobs whose payload is not a JobSpec: each fails at once, without a cluster.
        app = make_app(Settings(broker_url=redis_server.url))  # type: ignore[arg-type]
        first, second = (
            app.send_task(TASK_NAME, args=[{"not": "a job"}], queue=queue).id for _ in range(2)
        )
        app.close()
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    ledger = Ledger.from_url(redis_server.url, 3600)
    records = [ledger.get(first), ledger.get(second)]
    done = [r for r in records if r is not None]
    assert len(done) == 1 and done[0]["state"] == "failed", records
    # The other message is back on (or still on) the queue, not held in `unacked`.
    client = redis.Redis.from_url(redis_server.url)
    queued = [json.loads(m)["headers"]["id"] for m in client.lrange(queue, 0, -1)]
    untouched = second if records[0] is not None else first
    assert queued == [untouched]
    assert b"--max-jobs 1" in log.read_bytes()
    # A stopped consumer is not a healthy one.
    assert not heartbeat.exists()
    dead = _health(env)
    assert dead.returncode == 1 and "no heartbeat file" in json.loads(dead.stdout)["reason"]


def test_idle_exit_stops_a_consumer_that_gets_no_job(
    redis_server: EmbeddedRedis, s3_endpoint: str, tmp_path: Path
) -> None:
    queue = f"idle-{uuid.uuid4().hex[:8]}"
    heartbeat = tmp_path / "heartbeat.json"
    env = _env(redis_server, s3_endpoint, heartbeat)
    log = tmp_path / "consumer.log"
    process = _start(env, log, f"--queue={queue}", "--idle-exit=2")
    try:
        _wait_for_file(heartbeat, process, log)
        started = time.monotonic()
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started >= 1.0  # it waited for work before giving up
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"no job started within 2 s" in log.read_bytes()
    assert not heartbeat.exists()


def test_health_reports_a_stale_heartbeat(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat.json"
    heartbeat.write_text(json.dumps({"pid": 1, "time": time.time() - 100, "job": None}))
    env = {"PATH": "/usr/bin:/bin", "VOXFLEET_HEARTBEAT_FILE": str(heartbeat),
           "VOXFLEET_HEARTBEAT_INTERVAL_S": "10"}  # fmt: skip
    result = _health(env)
    assert result.returncode == 1
    # The image's HEALTHCHECK form, which skips importing Celery, says the same.
    plain = subprocess.run(
        [sys.executable, "-m", "shared.heartbeat"], env=env, capture_output=True, text=True
    )
    assert plain.returncode == 1 and plain.stdout.startswith("unhealthy: last heartbeat 1")
    assert re.fullmatch(
        r"last heartbeat 1[0-9][0-9] s ago \(limit 30 s\)", json.loads(result.stdout)["reason"]
    )
