"""What every benchmark shares: CPU, wall and peak-memory measurement of a block (including
every child process it started and reaped: Dask nannies and workers), and writing the results
file.

These machines have 2 noisy virtual cores, so wall speedups swing from run to run; CPU seconds
(how much extra work the chunking costs) are the steadier figure, and both are reported.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: The command the running benchmark was given (``python -m bench`` sets it per benchmark).
COMMAND = ""


@dataclass
class Measurement:
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system, this process and every reaped descendant
    own_cpu_s: float = 0.0  # this process alone (its threads: a LocalCluster's scheduler, nannies)
    # The largest PSS of this process and all its descendants at once (shared pages counted
    # once), sampled every second: the block's peak memory, workers included.
    peak_pss_bytes: int = 0
    sampler_cpu_s: float = 0.0  # what measuring the peak cost; already taken off the above

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "own_cpu_s": round(self.own_cpu_s, 4),
            "peak_pss_mib": round(self.peak_pss_bytes / 2**20, 1),
            "sampler_cpu_s": round(self.sampler_cpu_s, 3),
        }


def _own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _cpu_now() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _own_cpu() + kids.ru_utime + kids.ru_stime


def _live_children() -> dict[int, float]:
    """CPU so far of each live child process, with the children *it* has reaped.

    A local cluster's workers are forked by a forkserver (a long-lived child of this process):
    they are its children, not ours, so their CPU reaches our ``RUSAGE_CHILDREN`` only when the
    forkserver itself exits. Reading the forkserver's own times plus its reaped children's
    charges them to the block that ran them."""
    import psutil

    live: dict[int, float] = {}
    for child in psutil.Process().children():
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        live[child.pid] = t.user + t.system + t.children_user + t.children_system
    return live


@contextmanager
def measure() -> Iterator[Measurement]:
    """Wall and CPU seconds of the block: this process, every child it reaped during the block,
    and what live children (a forkserver and the workers it reaped) used during it. Close
    clusters inside the block: a worker still running at its end is not counted."""
    from bench.memory import PeakPss

    result = Measurement()
    live0 = _live_children()
    cpu0, own0, wall0 = _cpu_now(), _own_cpu(), time.perf_counter()
    peak = PeakPss(os.getpid(), interval_s=1.0)
    try:
        with peak:
            yield result
    finally:
        result.peak_pss_bytes = peak.bytes
        result.wall_s = time.perf_counter() - wall0
        reaped = _cpu_now() - cpu0
        live1 = _live_children()
        # Children alive at both ends: what they used in between. Born during the block: all
        # of it. Alive at the start, reaped during it: RUSAGE_CHILDREN holds their whole life,
        # so take off what they had used before the block.
        during = sum(cpu - live0.get(pid, 0.0) for pid, cpu in live1.items())
        before = sum(cpu for pid, cpu in live0.items() if pid not in live1)
        # The memory sampler's own CPU (its thread, in this process) is the measurement's, not
        # the job's.
        result.cpu_s = reaped + during - before - peak.cpu_s
        result.own_cpu_s = _own_cpu() - own0 - peak.cpu_s
        result.sampler_cpu_s = peak.cpu_s


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
        "command": COMMAND or " ".join(["python -m bench", *sys.argv[1:]]),
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


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds used by every process on this machine so far, and seconds stolen by the
    hypervisor (``/proc/stat``); (0, 0) where that file does not exist."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


@contextmanager
def host_load(own_cpu: Callable[[], float]) -> Iterator[dict[str, float]]:
    """How busy the machine was around the block: CPU seconds of *other* processes (the
    machine's total minus ``own_cpu()``), steal time and load average. On a shared machine a
    figure measured next to someone else's job is not worth much; these say when that was so."""
    info: dict[str, float] = {}
    busy0, steal0 = _machine_cpu()
    load0 = os.getloadavg()[0]
    try:
        yield info
    finally:
        busy1, steal1 = _machine_cpu()
        info.update(
            foreign_cpu_s=round(max(0.0, busy1 - busy0 - own_cpu()), 2),
            steal_s=round(steal1 - steal0, 2),
            loadavg_start=round(load0, 2),
            loadavg_end=round(os.getloadavg()[0], 2),
        )
