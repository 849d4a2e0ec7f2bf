"""A consumer's heartbeat file: written by ``voxfleet worker``, read by ``voxfleet health``.

The container HEALTHCHECK runs ``python -m shared.heartbeat`` (every 30 s on every consumer):
this module and the settings only, ~0.5 s of CPU, where the full ``voxfleet health`` command
imports Celery too (~1.2 s). The file is replaced atomically (write, then rename), so a reader
never sees half of it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A beat may be late by this many intervals before the consumer counts as stuck: a loaded
# machine can delay one thread's wake-up by seconds, but not by three full intervals.
STALE_AFTER_INTERVALS = 3.0


def write_beat(path: Path, **fields: Any) -> None:
    beat = {"pid": os.getpid(), "time": time.time(), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary file per writer thread: the heartbeat thread and the job's signal handlers
    # may write at the same moment.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(beat, sort_keys=True))
    tmp.replace(path)


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str
    beat: dict[str, Any]


def check_beat(path: Path, interval_s: float, now: float | None = None) -> Health:
    """Healthy when the file exists, parses, and was written less than
    ``STALE_AFTER_INTERVALS * interval_s`` seconds ago."""
    try:
        beat = json.loads(path.read_text())
    except FileNotFoundError:
        return Health(False, f"no heartbeat file {path} (consumer not started yet?)", {})
    except (OSError, ValueError) as exc:
        return Health(False, f"unreadable heartbeat file {path}: {exc}", {})
    if not isinstance(beat, dict) or not isinstance(beat.get("time"), int | float):
        return Health(False, f"heartbeat file {path} holds no time", {})
    age = (time.time() if now is None else now) - float(beat["time"])
    limit = STALE_AFTER_INTERVALS * interval_s
    if age > limit:
        return Health(False, f"last heartbeat {age:.0f} s ago (limit {limit:.0f} s)", beat)
    job = beat.get("job")
    doing = f"running job {job}" if job else "idle"
    return Health(True, f"alive, {doing}, jobs done {beat.get('jobs_done', 0)}", beat)


def check_configured() -> Health:
    """The check for this process's settings (``VOXFLEET_HEARTBEAT_FILE``)."""
    from shared.settings import get_settings

    settings = get_settings()
    if settings.heartbeat_file is None:
        return Health(False, "VOXFLEET_HEARTBEAT_FILE is not set", {})
    return check_beat(Path(settings.heartbeat_file), settings.heartbeat_interval_s)


def main() -> int:
    health = check_configured()
    print(("healthy: " if health.healthy else "unhealthy: ") + health.reason)
    return 0 if health.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
