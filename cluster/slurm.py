"""``slurm``: Dask workers as SLURM jobs through dask-jobqueue (the supercomputer case of the
micro-CT paper). ``pip install 'voxfleet[slurm]'``; the consumer runs on a login or service
node that can call ``sbatch``."""

from __future__ import annotations

from typing import Any

from distributed import Client

from cluster.base import ClusterBackend
from shared.errors import ConfigError


class SlurmBackend(ClusterBackend):
    name = "slurm"
    # Allocations wait in the batch queue and are charged: request them only for valid inputs.
    start_early = False

    def cluster_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {
            "cores": self.size.threads,
            "processes": 1,
            "memory": self.size.memory or s.slurm_memory,
            "queue": s.slurm_queue,
            "account": s.slurm_account,
            "walltime": s.slurm_walltime,
            "job_name": f"voxfleet-{self.labels.get('job_key', '')[:12]}",
            "job_extra_directives": list(s.slurm_job_extra),
            "death_timeout": 120,
        }

    def _start(self) -> Client:
        try:
            from dask_jobqueue.slurm import SLURMCluster
        except ImportError:
            raise ConfigError(
                "cluster 'slurm' needs dask-jobqueue: pip install 'voxfleet[slurm]'"
            ) from None
        self.cluster = SLURMCluster(**self.cluster_kwargs())
        workers = self.size.workers or self.settings.slurm_workers
        if self.size.adaptive_max:
            self.cluster.adapt(minimum=workers, maximum=self.size.adaptive_max)
        else:
            self.cluster.scale(n=workers)
        client = Client(self.cluster)
        client.wait_for_workers(1, timeout=self.settings.slurm_queue_wait_s)
        return client

    def _stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def identity(self) -> dict[str, Any]:
        return {"job_name": self.cluster_kwargs()["job_name"], "queue": self.settings.slurm_queue}
