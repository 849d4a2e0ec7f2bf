"""``tcp://host:port``: an existing scheduler (dask-gateway, the Kubernetes operator,
dask-jobqueue, a long-lived cluster). voxfleet connects and never tears it down."""

from __future__ import annotations

from distributed import Client

from cluster.base import ClusterBackend
from shared.settings import Settings


class AddressBackend(ClusterBackend):
    name = "address"
    owns_cluster = False

    def __init__(self, settings: Settings, address: str) -> None:
        super().__init__(settings)
        self.address = address

    def _start(self) -> Client:
        return Client(self.address, timeout=self.settings.scheduler_connect_timeout_s)
