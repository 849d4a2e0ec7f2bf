"""Acquiring and releasing Dask clusters for one job.

``starting(spec)`` begins starting a cluster and yields a handle whose ``client()`` waits for
it. Where a start is cheap (``local``, an existing scheduler) it runs in the background while
the consumer loads and validates the job's inputs, so start-up overlaps download instead of
adding to it; where it costs money (``coiled``, ``slurm``) it starts only when first asked
for. ``acquire(spec)`` is the plain blocking form. Both always tear down what they started --
on success, error or interrupt -- unless a ``WarmPool`` keeps it for the campaign's next job.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from distributed import Client

from cluster.address import AddressBackend
from cluster.base import ClusterBackend
from cluster.coiled import CoiledBackend
from cluster.local import LocalBackend
from cluster.pool import WarmPool
from cluster.slurm import SlurmBackend
from shared.errors import ClusterError, ConfigError
from shared.jobspec import ClusterSize
from shared.settings import Settings
from shared.timing import StageTimer, process_cpu_s

_LOCAL = re.compile(r"^local(?::([1-9][0-9]{0,2}))?$")

__all__ = ["ClusterBackend", "PendingCluster", "WarmPool", "acquire", "backend_for", "starting"]


def backend_for(
    spec: str,
    settings: Settings,
    size: ClusterSize | None = None,
    labels: dict[str, str] | None = None,
) -> ClusterBackend:
    if match := _LOCAL.match(spec):
        workers = int(match.group(1)) if match.group(1) else None
        return LocalBackend(settings, size, labels, n_workers=workers)
    if spec.startswith(("tcp://", "tls://")):
        return AddressBackend(settings, size, labels, address=spec)
    if spec == "coiled":
        return CoiledBackend(settings, size, labels)
    if spec == "slurm":
        return SlurmBackend(settings, size, labels)
    raise ConfigError(
        f"unsupported cluster spec {spec!r} (local, local:N, coiled, slurm, tcp://host:port)"
    )


def import_modules(modules: Sequence[str]) -> None:
    """Import ``modules`` (runs on every worker: no-ops where the workers were started with
    them already imported)."""
    for name in modules:
        importlib.import_module(name)


def _start(backend: ClusterBackend, warm_modules: Sequence[str]) -> Client:
    backend.preload = tuple(warm_modules)
    client = backend.start()
    if warm_modules:
        # Import the pipeline's stack on every worker now, in parallel, rather than inside the
        # first task of the first stage (dipy or ITK take seconds to import).
        t0 = time.perf_counter()
        client.run(import_modules, list(warm_modules))
        backend.acquire_s += time.perf_counter() - t0
    if backend.owns_cluster:
        backend.startup_cpu_s = client.run(process_cpu_s)
    return client


class PendingCluster:
    """A cluster that may still be starting (or, if lazy, not yet asked for)."""

    def __init__(self, spec: str, begin: Callable[[], Future[Client]]) -> None:
        self.spec = spec
        self._begin = begin
        self._future: Future[Client] | None = None
        self.waited_s = 0.0

    def begin(self) -> None:
        if self._future is None:
            self._future = self._begin()

    @property
    def begun(self) -> bool:
        return self._future is not None

    def client(self) -> Client:
        t0 = time.perf_counter()
        self.begin()
        assert self._future is not None
        try:
            return self._future.result()
        except (OSError, RuntimeError) as exc:
            # Dask reports a worker that cannot start as RuntimeError, a scheduler that cannot
            # be reached as OSError/TimeoutError; either may pass, so both are retried.
            raise ClusterError(f"could not acquire cluster {self.spec!r}: {exc}") from exc
        finally:
            self.waited_s += time.perf_counter() - t0


@contextmanager
def starting(
    spec: str,
    settings: Settings,
    timer: StageTimer | None = None,
    *,
    warm_modules: Sequence[str] = (),
    size: ClusterSize | None = None,
    labels: dict[str, str] | None = None,
    pool: WarmPool | None = None,
    pool_key: object = None,
) -> Iterator[PendingCluster]:
    key = (spec, size, pool_key)
    kept = pool.take(key) if pool is not None and pool_key is not None else None
    backend = kept or backend_for(spec, settings, size, labels)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxfleet-cluster")
    if kept is not None:
        ready: Future[Client] = Future()
        assert kept.client is not None
        ready.set_result(kept.client)
        kept.acquire_s = 0.0
        pending = PendingCluster(spec, lambda: ready)
    else:
        pending = PendingCluster(spec, lambda: executor.submit(_start, backend, warm_modules))
    if backend.start_early or kept is not None:
        pending.begin()
    held_from = time.perf_counter()
    info: dict[str, object] = {"backend": backend.name}
    keep = False
    try:
        yield pending
        if pending.begun:
            info = backend.describe()
        keep = pool is not None and pool_key is not None and pending.begun
    finally:
        executor.shutdown(wait=True)  # a start still in flight finishes, so it can be torn down
        held_s = time.perf_counter() - held_from
        if keep:
            assert pool is not None
            pool.give(key, backend)
            backend.release_s = 0.0
        elif pending.begun or kept is not None:
            backend.close()
        if timer is not None:
            timer.record("cluster_acquire", backend.acquire_s)
            timer.record("cluster_wait", pending.waited_s)
            timer.record("cluster_release", backend.release_s)
            threads = info.get("threads")
            timer.extra["cluster"] = {
                **info,
                "release_s": round(backend.release_s, 6),
                "warm": kept is not None,
                "kept": keep,
                # What the job occupied: every thread of the cluster for as long as it held it.
                "core_seconds": round(float(threads) * held_s, 3)
                if isinstance(threads, int)
                else None,
            }


@contextmanager
def acquire(
    spec: str,
    settings: Settings,
    timer: StageTimer | None = None,
    *,
    warm_modules: Sequence[str] = (),
    size: ClusterSize | None = None,
    labels: dict[str, str] | None = None,
) -> Iterator[Client]:
    with starting(
        spec, settings, timer, warm_modules=warm_modules, size=size, labels=labels
    ) as pending:
        yield pending.client()
