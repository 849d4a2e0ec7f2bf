"""Acquiring and releasing Dask clusters for one job.

``acquire(spec)`` is the only entry point: it parses a cluster spec (``local``, ``local:N``,
``tcp://host:port``), starts or connects, yields a ``distributed.Client`` and always tears down
what it started, on success, error or interrupt, recording the seconds each took.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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


@contextmanager
def acquire(spec: str, settings: Settings, timer: StageTimer | None = None) -> Iterator[Client]:
    backend = backend_for(spec, settings)
    try:
        client = backend.start()
    except OSError as exc:
        backend.close()
        raise ClusterError(f"could not acquire cluster {spec!r}: {exc}") from exc
    info = backend.describe()
    try:
        yield client
    finally:
        backend.close()
        if timer is not None:
            timer.record("cluster_acquire", backend.acquire_s)
            timer.record("cluster_release", backend.release_s)
            timer.extra["cluster"] = {**info, "release_s": round(backend.release_s, 6)}
