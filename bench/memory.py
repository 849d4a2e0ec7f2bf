"""Peak memory of a process tree, counting shared pages once: the sum of every process's PSS
(``/proc/PID/smaps_rollup``), sampled in a background thread. Used by the benchmarks and by the
by-hand runs recorded in docs/benchmarks-history.md."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree(root: int) -> list[int]:
    """``root`` and all its descendants now alive (from ``/proc/*/stat``'s parent field)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += frontier
    return found


#: The sampler's CPU is kept below this share of one core: reading ``smaps_rollup`` walks a
#: process's page tables, ~10 ms per GiB mapped, so sampling a 12 GiB job every second would
#: cost ~5% of a core (measured: 53 CPU s over a 680 s HCP-size tractography job).
MAX_OVERHEAD = 0.01


class PeakPss:
    """``with PeakPss(pid) as peak: ...`` then ``peak.bytes``: the largest total PSS of the tree
    under ``pid`` seen at any sample (every ``interval_s``, or less often where a sample is
    costly: see ``MAX_OVERHEAD``), and ``peak.cpu_s``, what the sampling itself cost (its
    thread's CPU, which a benchmark takes off the process it ran in)."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.bytes = 0
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu0 = time.thread_time()
            total = sum(_pss_kib(p) for p in tree(self.pid)) * 1024
            self.bytes = max(self.bytes, total)
            cost = time.thread_time() - cpu0
            self.cpu_s += cost
            self._stop.wait(max(self.interval_s, cost / MAX_OVERHEAD))

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


if __name__ == "__main__":  # python -m bench.memory PID: print the tree's peak until killed
    import sys

    with PeakPss(int(sys.argv[1])) as peak:
        try:
            while True:
                time.sleep(5)
                print(f"peak {peak.bytes / 2**30:.2f} GiB", flush=True)
        except KeyboardInterrupt:
            pass
