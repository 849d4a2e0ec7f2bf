"""Peak memory of a process tree, counting shared pages once: the sum of every process's PSS
(``/proc/PID/smaps_rollup``), sampled in a background thread; and, per process of the tree, its
own peak PSS and CPU seconds (``/proc/PID/stat``). Used by the benchmarks and by the by-hand
runs recorded in docs/benchmarks-history.md."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _stats() -> dict[int, tuple[int, float]]:
    """Every process now alive: its parent and its own CPU seconds so far (utime + stime)."""
    stats: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # after the command: state, ppid, ..., utime (field 14) and stime (15), in ticks
            cpu = (int(fields[11]) + int(fields[12])) * _TICK_S
            stats[int(stat.parent.name)] = (int(fields[1]), cpu)
        except (OSError, ValueError, IndexError):
            continue
    return stats


def _descendants(root: int, stats: dict[int, tuple[int, float]]) -> list[int]:
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, (ppid, _) in stats.items() if ppid in frontier]
        found += frontier
    return found


def tree(root: int) -> list[int]:
    """``root`` and all its descendants now alive (from ``/proc/*/stat``'s parent field)."""
    return _descendants(root, _stats())


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def short_command(argv: list[str]) -> str:
    """A process's command line, short: the program and its first meaningful argument
    (``python -m producer worker`` -> "voxfleet worker", a multiprocessing forkserver ->
    "forkserver", ``/usr/bin/redis-server 127.0.0.1:6379`` -> "redis-server")."""
    if not argv:
        return "?"
    program = Path(argv[0]).name
    rest = argv[1:]
    if program.startswith("python"):
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
            # interpreter flags: -B, -u; -X and -W take a value
            rest = rest[2:] if rest[0] in ("-X", "-W") else rest[1:]
        if rest[:1] == ["-c"]:
            code = rest[1] if len(rest) > 1 else ""
            for marker, name in (
                ("forkserver", "forkserver"),
                ("resource_tracker", "resource tracker"),
                ("multiprocessing.spawn", "spawned python"),
            ):
                if marker in code:
                    return name
            return "python -c"
        if rest[:1] == ["-m"]:
            module = rest[1] if len(rest) > 1 else "?"
            program = {"producer": "voxfleet"}.get(module, module)
            rest = rest[2:]
        elif rest:
            program, rest = Path(rest[0]).name, rest[1:]  # python path/to/script.py ...
        else:
            return "python"
    first = next((a for a in rest if not a.startswith("-")), None)
    # A server's address or a file is not what tells processes apart.
    if first is None or "/" in first or ":" in first or "." in first:
        return program
    return f"{program} {first}"


#: The sampler's CPU is kept below this share of one core: reading ``smaps_rollup`` walks a
#: process's page tables, ~10 ms per GiB mapped, so sampling a 12 GiB job every second would
#: cost ~5% of a core (measured: 53 CPU s over a 680 s HCP-size tractography job).
MAX_OVERHEAD = 0.01


class PeakPss:
    """``with PeakPss(pid) as peak: ...`` then ``peak.bytes``: the largest total PSS of the tree
    under ``pid`` seen at any sample (every ``interval_s``, or less often where a sample is
    costly: see ``MAX_OVERHEAD``), and ``peak.cpu_s``, what the sampling itself cost (its
    thread's CPU, which a benchmark takes off the process it ran in).

    ``peak.processes``: every process of the tree seen at a sample, one dict each: ``pid``,
    ``ppid``, ``command`` (``short_command``; a process forked by a forkserver without exec
    shares its command line, and is a "dask worker": voxfleet's forkservers fork only local
    clusters' workers), ``peak_pss_mib`` (its own largest PSS: shared pages are split among
    their sharers, so these add up to the tree's total at one sample, not to ``bytes``) and
    ``cpu_s`` (its own user + system CPU at its last sample: a lower bound, short by what it
    used after that sample; its reaped children are not in it)."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.bytes = 0
        self.cpu_s = 0.0
        self._seen: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def processes(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(row) for _, row in sorted(self._seen.items())]
        for row in rows:
            row["peak_pss_mib"] = round(row.pop("peak_pss_kib") / 1024, 1)
            row["cpu_s"] = round(row["cpu_s"], 3)
            row.pop("argv")
        return rows

    def _sample(self) -> None:
        stats = _stats()
        total = 0
        with self._lock:
            for pid in _descendants(self.pid, stats):
                pss = _pss_kib(pid)
                total += pss
                if pid not in stats:  # the root, gone
                    continue
                ppid, cpu = stats[pid]
                row = self._seen.get(pid)
                if row is None:
                    argv = _argv(pid)
                    row = self._seen[pid] = {
                        "pid": pid,
                        "ppid": ppid,
                        "command": short_command(argv),
                        "argv": argv,
                        "peak_pss_kib": 0,
                        "cpu_s": 0.0,
                    }
                    parent = self._seen.get(ppid)
                    if parent is not None and argv and parent["argv"] == argv:
                        # forked, not exec'd: it has its parent's command line
                        row["command"] = (
                            "dask worker"
                            if parent["command"] == "forkserver"
                            else f"fork of {parent['command']}"
                        )
                elif row["argv"] != (argv := _argv(pid)) and argv:  # exec'd since
                    row.update(argv=argv, command=short_command(argv))
                row["peak_pss_kib"] = max(row["peak_pss_kib"], pss)
                row["cpu_s"] = max(row["cpu_s"], cpu)
        self.bytes = max(self.bytes, total * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu0 = time.thread_time()
            self._sample()
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
