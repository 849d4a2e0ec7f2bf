"""``tcp://host:port``: an existing scheduler (dask-gateway, the Kubernetes operator,
dask-jobqueue, a long-lived cluster). voxfleet connects and never tears it down; the job's
size is the operator's business there."""

from __future__ import annotations

from distributed import Client

from cluster.base import ClusterBackend
from shared.jobspec import ClusterSize
from shared.settings import Settings


class AddressBackend(ClusterBackend):
    name = "address"
    owns_cluster = False

    def __init__(
        self,
        settings: Settings,
        size: ClusterSize | None = None,
        labels: dict[str, str] | None = None,
        address: str = "",
    ) -> None:
        super().__init__(settings, size, labels)
        self.address = address

    def _start(self) -> Client:
        return Client(self.address, timeout=self.settings.scheduler_connect_timeout_s)

    def identity(self) -> dict[str, str]:
        return {"address": self.address}
