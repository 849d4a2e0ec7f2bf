"""Per-stage wall-clock timing that ends up in each job's ``timing.json``."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from shared.errors import TimeLimitExceeded


class StageTimer:
    """Records wall seconds per named stage, in the order the stages ran, and the CPU seconds
    the recording process spent in each (``stages_cpu_s``: the consumer's own work, such as the
    merge; a stage's work on Dask workers is counted by the pipeline from the workers).

    A stage run twice (a retried shard, say) accumulates. ``deadline`` (epoch seconds) is checked
    whenever a stage starts: Celery's solo pool cannot enforce time limits with signals, so the
    job enforces its own at stage boundaries. ``check`` is a hook run at every boundary too
    (campaign cancellation uses it).
    """

    def __init__(
        self, *, deadline: float | None = None, check: Callable[[str], None] | None = None
    ) -> None:
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.stages_cpu: dict[str, float] = {}
        self.stages_rss: dict[str, float] = {}  # the consumer's peak resident MiB per stage
        self.extra: dict[str, Any] = {}
        self.deadline = deadline
        self._check = check

    def boundary(self, name: str) -> None:
        if self.deadline is not None and time.time() > self.deadline:
            raise TimeLimitExceeded(f"time limit reached before stage {name!r}")
        if self._check is not None:
            self._check(name)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.boundary(name)
        t0, cpu0 = time.perf_counter(), process_cpu_s()
        reset_peak_rss()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - t0)
            spent = max(0.0, process_cpu_s() - cpu0)
            self.stages_cpu[name] = self.stages_cpu.get(name, 0.0) + spent
            peak = peak_rss_mib()
            self.stages_rss[name] = max(self.stages_rss.get(name, 0.0), peak)

    def record(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + max(0.0, float(seconds))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "wall_s": round(self.elapsed, 6),
            "stages_s": {k: round(v, 6) for k, v in self.stages.items()},
            "stages_cpu_s": {k: round(v, 6) for k, v in self.stages_cpu.items()},
            "stages_peak_rss_mib": {k: round(v, 1) for k, v in self.stages_rss.items()},
            "peak_rss_mib": self.peaks(),
            **self.extra,
        }

    def peaks(self) -> dict[str, float | None]:
        """Peak resident memory in MiB: the consumer's over the job's stages, each worker's
        (when the job started the cluster, which then lived for the job alone), and their sum
        (an upper bound on the peak of all of them at once: the peaks need not coincide)."""
        consumer = max(self.stages_rss.values(), default=None)
        workers = (self.extra.get("cluster") or {}).get("worker_peak_rss_mib") or {}
        total = None if consumer is None else round(consumer + sum(workers.values()), 1)
        return {
            "consumer": None if consumer is None else round(consumer, 1),
            "workers": round(sum(workers.values()), 1) if workers else None,
            "sum_of_peaks": total,
        }


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: ``5`` into ``clear_refs`` resets
    ``VmHWM``); elsewhere the peak stays the process's lifetime peak."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last ``reset_peak_rss``, in MiB. Runs on
    Dask workers too (``client.run``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def process_cpu_s() -> float:
    """CPU seconds (user + system) of the calling process so far. Run on Dask workers too
    (``client.run``): busy seconds are wall time, which other jobs on a shared machine inflate;
    CPU seconds are the work done. Lives here, not in a pipeline, so that a worker calling it
    imports nothing else."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)
