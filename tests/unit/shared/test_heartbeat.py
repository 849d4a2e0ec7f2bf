"""The heartbeat file behind `voxfleet health` and the container/Kubernetes probes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from shared.heartbeat import check_beat, write_beat


def test_fresh_beat_is_healthy_and_says_what_the_consumer_does(tmp_path: Path) -> None:
    path = tmp_path / "run" / "hb.json"
    write_beat(path, job="job-1", jobs_done=3)
    health = check_beat(path, interval_s=10)
    assert health.healthy and health.reason == "alive, running job job-1, jobs done 3"
    write_beat(path, job=None, jobs_done=4)
    assert check_beat(path, interval_s=10).reason == "alive, idle, jobs done 4"


def test_stale_missing_and_garbled_beats_are_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    assert not check_beat(path, 10).healthy  # missing
    write_beat(path)
    written = json.loads(path.read_text())["time"]
    assert check_beat(path, 10, now=written + 29).healthy
    stale = check_beat(path, 10, now=written + 31)
    assert not stale.healthy and stale.reason == "last heartbeat 31 s ago (limit 30 s)"
    path.write_text("{not json")
    assert "unreadable" in check_beat(path, 10).reason
    path.write_text(json.dumps({"pid": 1}))
    assert "holds no time" in check_beat(path, 10).reason


def test_concurrent_writers_never_leave_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(200):
                write_beat(path, job=f"{n}-{i}", jobs_done=i)
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):
        if path.exists():
            assert check_beat(path, 10).healthy  # always whole JSON
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hb.json"]  # no temporaries left
