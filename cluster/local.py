"""``local`` / ``local:N``: a LocalCluster of worker processes on the consumer's machine."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence

import dask
from distributed import Client, LocalCluster

from cluster.base import ClusterBackend
from shared.jobspec import ClusterSize
from shared.settings import Settings

# Dask uses this both for how long an orphaned worker retries its scheduler and for how long
# a nanny waits for its worker process to start (spawn, imports, connect). 30 s was too short
# for the second on a loaded host: at load average ~20 on 2 cores, starts timed out and the job
# failed before any work (seen 2026-11-22). An orphan spinning 2 minutes is the cheaper risk.
WORKER_DEATH_TIMEOUT_S = 120
# Dask's defaults suit an interactive dashboard: a system monitor every 0.5 s and a sampling
# profiler cost an idle 2-worker cluster ~6 CPU s a minute, charged to every job. A batch
# cluster needs neither at that rate (measured in docs/benchmarks.md, tractography). The
# event-loop tick (every 20 ms by default; it only measures loop latency, to warn when a loop
# is blocked past tick.limit = 3 s) cost another 7 CPU s a minute: an idle 2-worker cluster
# took 2.7 CPU s per 20 s with it and 0.43 with a 1 s tick (measured 2026-11-22).
#
# Dask also exports MALLOC_TRIM_THRESHOLD_=65536 to its workers, to hand freed memory back to
# the OS sooner. Setting any malloc threshold turns off glibc's dynamic mmap threshold, so every
# array over 128 KiB is a fresh mmap and munmap: serial RecoBundles run with it set paid ~3 s
# of system time in ~30 s (0.24 s without); CSD and tracking allocate per voxel and streamline.
# Large arrays (over glibc's 32 MiB ceiling) are still mapped and returned at once; the workers
# keep Dask's one-thread-per-library settings.
QUIET_DASK = {
    "distributed.admin.tick.interval": "1s",
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


# The forkserver's preload list is fixed when it starts (with the first worker of this process),
# so the first local cluster's pipeline decides it. Later clusters of another pipeline still
# work: their workers import what is missing in the warm step, as spawned workers would.
_forkserver_lock = threading.Lock()
_forkserver_preload: tuple[str, ...] | None = None


def use_forkserver(modules: Sequence[str]) -> tuple[str, ...]:
    """Have this process's local workers forked from a server that imported ``distributed`` and
    ``modules`` once; returns the preload list in effect (the first caller's).

    Spawned workers each start an interpreter and import distributed and the pipeline's stack
    (dipy, ITK: ~8 CPU s and ~4 s of wall per worker, every job); forked ones start in a fraction
    of a second with all of it in memory, shared copy-on-write. Dask's Nanny supports forkserver
    (``distributed.worker.multiprocessing-method``) and sets its own preload list once; this
    replaces it with ours. The server inherits this process's environment when it starts, which
    is after the Nanny exported its pre-spawn variables (one thread per BLAS/OpenMP library), so
    the libraries imported there already see them.
    """
    global _forkserver_preload
    with _forkserver_lock:
        if _forkserver_preload is None:
            from distributed.utils import get_mp_context

            with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
                get_mp_context()  # lets Dask set (and mark as set) its own list first
            preload = ("distributed", *modules)
            multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
            _forkserver_preload = preload
        return _forkserver_preload


class LocalBackend(ClusterBackend):
    name = "local"

    def __init__(
        self,
        settings: Settings,
        size: ClusterSize | None = None,
        labels: dict[str, str] | None = None,
        n_workers: int | None = None,
    ) -> None:
        super().__init__(settings, size, labels)
        # One single-threaded process per core by default: dipy and ITK hold the GIL, so
        # threads would serialise; processes give real parallelism. `local:N` wins over the
        # job's size, which wins over the settings.
        self.n_workers = (
            n_workers or self.size.workers or settings.local_workers or os.cpu_count() or 1
        )

    def _start(self) -> Client:
        method = self.settings.local_start_method
        if method == "forkserver":
            use_forkserver(self.preload)
        # Nannies copy the config they are created under into their workers.
        with dask.config.set({**QUIET_DASK, "distributed.worker.multiprocessing-method": method}):
            self.cluster = self._make_cluster()
        return Client(self.cluster)

    def _make_cluster(self) -> LocalCluster:
        return LocalCluster(
            n_workers=self.n_workers,
            threads_per_worker=self.size.threads,
            processes=True,
            memory_limit=self.size.memory or self.settings.local_memory_limit,
            # The scheduler's HTTP server (health, metrics) starts even with the dashboard off;
            # a random port keeps many consumers on one host from fighting over 8787.
            dashboard_address=":0",
            silence_logs=logging.WARNING,
            # A worker whose consumer was SIGKILLed (and its scheduler with it) exits after this
            # instead of spinning on reconnects as an orphan.
            death_timeout=WORKER_DEATH_TIMEOUT_S,
        )

    def _stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
