"""``coiled``: an ephemeral cluster on Coiled, one per job (or per campaign when kept warm).

Tested at our boundary only (a stand-in records the arguments and the close); the real
service cannot be reached from CI. ``pip install 'voxfleet[coiled]'``; authentication is
Coiled's own (``DASK_COILED__TOKEN``), never a voxfleet setting.
"""

from __future__ import annotations

import re
from typing import Any

from distributed import Client

from cluster.base import ClusterBackend
from shared.errors import ConfigError


class CoiledBackend(ClusterBackend):
    name = "coiled"
    # A Coiled cluster costs money from the moment it is requested: start it only once the
    # job's inputs have validated.
    start_early = False

    cluster: Any = None

    @property
    def cluster_name(self) -> str:
        # Derived from the job key: a redelivered copy of the same job finds the same cluster
        # (Coiled reuses a running cluster of that name) instead of paying for a second one.
        base = self.labels.get("cluster_name") or f"voxfleet-{self.labels.get('job_key', '')[:16]}"
        return re.sub(r"[^a-z0-9-]", "-", base.lower()).strip("-")[:63]

    @property
    def tags(self) -> dict[str, str]:
        return {
            f"voxfleet-{k}": str(v)
            for k, v in self.labels.items()
            if k in ("campaign", "job", "pipeline") and v
        }

    def cluster_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "name": self.cluster_name,
            "n_workers": self.size.workers or s.coiled_workers,
            "worker_vm_types": s.coiled_vm_types or None,
            "worker_cpu": s.coiled_worker_cpu,
            "worker_memory": self.size.memory or s.coiled_worker_memory,
            "region": s.coiled_region,
            "spot_policy": s.coiled_spot_policy,
            "software": s.coiled_software,
            "tags": self.tags,
            "shutdown_on_close": True,
            "idle_timeout": s.coiled_idle_timeout,
            "no_client_timeout": s.coiled_no_client_timeout,
            "cluster_timeout": s.coiled_cluster_timeout,
            "worker_options": {"nthreads": self.size.threads},
        }
        return {k: v for k, v in kwargs.items() if v is not None}

    def _start(self) -> Client:
        try:
            import coiled
        except ImportError:
            raise ConfigError(
                "cluster 'coiled' needs the coiled package: pip install 'voxfleet[coiled]'"
            ) from None
        self.cluster = coiled.Cluster(**self.cluster_kwargs())
        return Client(self.cluster)

    def _stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def identity(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.cluster_name, "tags": self.tags}
        cluster_id = getattr(self.cluster, "cluster_id", None)
        if cluster_id is not None:
            info["cluster_id"] = cluster_id
        return info
