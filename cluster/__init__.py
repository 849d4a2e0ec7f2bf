"""Acquiring and releasing Dask clusters for one job.

``starting(spec)`` begins starting a cluster in the background and yields a handle whose
``client()`` waits for it: the consumer loads and validates the job's inputs meanwhile, so
cluster start-up (seconds locally, minutes on a cloud) overlaps input download instead of
adding to it. ``acquire(spec)`` is the plain blocking form. Both always tear down what they
started -- on success, error or interrupt -- and record how long each part took.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from distributed import Client

from cluster.address import AddressBackend
from cluster.base import ClusterBackend
from cluster.local import LocalBackend
from shared.errors import ClusterError, ConfigError
from shared.settings import Settings
from shared.timing import StageTimer

_LOCAL = re.compile(r"^local(?::([1-9][0-9]{0,2}))?$")


def backend_for(spec: str, settings: Settings) -> ClusterBackend:
    if match := _LOCAL.match(spec):
        return LocalBackend(settings, int(match.group(1)) if match.group(1) else None)
    if spec.startswith(("tcp://", "tls://")):
        return AddressBackend(settings, spec)
    raise ConfigError(f"unsupported cluster spec {spec!r} (local, local:N, tcp://host:port)")


def _import_modules(modules: Sequence[str]) -> None:
    for name in modules:
        importlib.import_module(name)


class PendingCluster:
    """A cluster that may still be starting."""

    def __init__(self, future: Future[Client], spec: str) -> None:
        self._future = future
        self.spec = spec
        self.waited_s = 0.0

    def client(self) -> Client:
        t0 = time.perf_counter()
        try:
            return self._future.result()
        except (OSError, RuntimeError) as exc:
            # Dask reports a worker that cannot start as RuntimeError, a scheduler that cannot
            # be reached as OSError/TimeoutError; either may pass, so both are retried.
            raise ClusterError(f"could not acquire cluster {self.spec!r}: {exc}") from exc
        finally:
            self.waited_s += time.perf_counter() - t0


def _start(backend: ClusterBackend, warm_modules: Sequence[str]) -> Client:
    client = backend.start()
    if warm_modules:
        # Import the pipeline's stack on every worker now, in parallel, rather than inside the
        # first task of the first stage (dipy or ITK take seconds to import).
        t0 = time.perf_counter()
        client.run(_import_modules, list(warm_modules))
        backend.acquire_s += time.perf_counter() - t0
    return client


@contextmanager
def starting(
    spec: str,
    settings: Settings,
    timer: StageTimer | None = None,
    *,
    warm_modules: Sequence[str] = (),
) -> Iterator[PendingCluster]:
    backend = backend_for(spec, settings)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxfleet-cluster")
    pending = PendingCluster(pool.submit(_start, backend, warm_modules), spec)
    info: dict[str, object] = {"backend": backend.name}
    try:
        yield pending
        info = backend.describe()
    finally:
        pool.shutdown(wait=True)  # a start still in flight finishes, so it can be torn down
        backend.close()
        if timer is not None:
            timer.record("cluster_acquire", backend.acquire_s)
            timer.record("cluster_wait", pending.waited_s)
            timer.record("cluster_release", backend.release_s)
            timer.extra["cluster"] = {**info, "release_s": round(backend.release_s, 6)}


@contextmanager
def acquire(
    spec: str,
    settings: Settings,
    timer: StageTimer | None = None,
    *,
    warm_modules: Sequence[str] = (),
) -> Iterator[Client]:
    with starting(spec, settings, timer, warm_modules=warm_modules) as pending:
        yield pending.client()
