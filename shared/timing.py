"""Per-stage wall-clock timing that ends up in each job's ``timing.json``."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - t0)
            spent = max(0.0, process_cpu_s() - cpu0)
            self.stages_cpu[name] = self.stages_cpu.get(name, 0.0) + spent

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
            **self.extra,
        }


def process_cpu_s() -> float:
    """CPU seconds (user + system) of the calling process so far. Run on Dask workers too
    (``client.run``): busy seconds are wall time, which other jobs on a shared machine inflate;
    CPU seconds are the work done. Lives here, not in a pipeline, so that a worker calling it
    imports nothing else."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)
