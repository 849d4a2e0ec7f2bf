"""``local`` / ``local:N``: a LocalCluster of worker processes on the consumer's machine."""

from __future__ import annotations

import logging
import os

from distributed import Client, LocalCluster

from cluster.base import ClusterBackend
from shared.settings import Settings


class LocalBackend(ClusterBackend):
    name = "local"

    def __init__(self, settings: Settings, n_workers: int | None = None) -> None:
        super().__init__(settings)
        # One single-threaded process per core: dipy and ITK hold the GIL, so threads
        # would serialise; processes give real parallelism.
        self.n_workers = n_workers or settings.local_workers or os.cpu_count() or 1
        self.cluster: LocalCluster | None = None

    def _start(self) -> Client:
        self.cluster = LocalCluster(
            n_workers=self.n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=self.settings.local_memory_limit,
            # The scheduler's HTTP server (health, metrics) starts even with the dashboard off;
            # a random port keeps many consumers on one host from fighting over 8787.
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        )
        return Client(self.cluster)

    def _stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
