"""One base for every cluster backend (after dask-jobqueue: a backend sets a few things, the
base does the work). A backend makes a ``distributed.Client``; the base times acquisition and
release, describes the cluster for ``timing.json``, and guarantees teardown."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from distributed import Client

from shared.jobspec import ClusterSize
from shared.settings import Settings
from shared.timing import peak_rss_mib, process_cpu_s


class ClusterBackend(ABC):
    name: str = "base"
    #: False for clusters voxfleet did not create (an existing scheduler): never shut them down.
    owns_cluster: bool = True
    #: Start while the job's inputs load. False where a start costs money (a cloud cluster
    #: started for an input that then fails validation is paid for nothing).
    start_early: bool = True
    #: The deployed cluster object (LocalCluster, coiled.Cluster, ...), where there is one.
    cluster: Any = None
    #: Modules the job's workers will import (its pipeline's stack), set before ``start``: a
    #: backend that can start workers with them already imported does (``local``).
    preload: tuple[str, ...] = ()

    def __init__(
        self,
        settings: Settings,
        size: ClusterSize | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.size = size or ClusterSize()
        self.labels = labels or {}  # campaign, job, pipeline: names and cost tags
        self.client: Client | None = None
        self.acquire_s = 0.0
        self.release_s = 0.0
        self.started_at = 0.0
        #: Each worker process's CPU seconds once it was ready (interpreter, imports): the fixed
        #: price of an ephemeral cluster. Only for clusters this backend started.
        self.startup_cpu_s: dict[str, float] = {}

    @abstractmethod
    def _start(self) -> Client:
        """Create or connect to the cluster and return a client to it."""

    def _stop(self) -> None:  # noqa: B027 - optional hook; backends that own nothing skip it
        """Shut down what ``_start`` created; the base closes the client."""

    def identity(self) -> dict[str, Any]:
        """Backend-specific facts for timing.json (cluster name and id, cost tags)."""
        return {}

    def start(self) -> Client:
        t0 = time.perf_counter()
        self.started_at = time.time()
        self.client = self._start()
        if self.size.adaptive_max and self.cluster is not None:
            self.cluster.adapt(minimum=self.size.workers or 1, maximum=self.size.adaptive_max)
        self.acquire_s = time.perf_counter() - t0
        return self.client

    def close(self) -> None:
        t0 = time.perf_counter()
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.owns_cluster:
                self._stop()
            self.release_s = time.perf_counter() - t0

    def describe(self) -> dict[str, Any]:
        """What timing.json records about the cluster; collected while it is still up."""
        info: dict[str, Any] = {"backend": self.name, "acquire_s": round(self.acquire_s, 6)}
        info.update(self.identity())
        if self.client is not None and self.client.status == "running":
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            info["workers"] = len(workers)
            info["threads"] = sum(w.get("nthreads", 0) for w in workers.values())
            info["memory_bytes"] = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
            info["dashboard"] = self.client.dashboard_link
            if self.owns_cluster:
                # Everything the workers burnt for this job, start-up included (a cluster we did
                # not start has history that is not ours, so it is not reported there).
                info["worker_startup_cpu_s"] = _rounded(self.startup_cpu_s)
                info["worker_cpu_s"] = _rounded(self.client.run(process_cpu_s))
                info["worker_peak_rss_mib"] = _rounded(self.client.run(peak_rss_mib))
        return info


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in sorted(values.items())}
