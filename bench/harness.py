"""What every benchmark shares: CPU + wall measurement of a block (including every child
process it started and reaped: Dask nannies and workers), and writing the results file.

These machines have 2 noisy virtual cores, so wall speedups swing from run to run; CPU seconds
(how much extra work the chunking costs) are the steadier figure, and both are reported.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Measurement:
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system, this process and every reaped descendant
    own_cpu_s: float = 0.0  # this process alone (its threads: a LocalCluster's scheduler, nannies)

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "own_cpu_s": round(self.own_cpu_s, 4),
        }


def _own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _cpu_now() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _own_cpu() + kids.ru_utime + kids.ru_stime


@contextmanager
def measure() -> Iterator[Measurement]:
    """Wall and CPU seconds of the block. Child processes count once they have exited and been
    waited for, so close clusters inside the block."""
    result = Measurement()
    cpu0, own0, wall0 = _cpu_now(), _own_cpu(), time.perf_counter()
    try:
        yield result
    finally:
        result.wall_s = time.perf_counter() - wall0
        result.cpu_s = _cpu_now() - cpu0
        result.own_cpu_s = _own_cpu() - own0


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **figures}, indent=2))
    print(f"\n== {name} ==")
    for key, value in figures.items():
        if not isinstance(value, dict):
            print(f"  {key:32s} {value}")
    print(f"  -> {path}")
    return path
