"""Warm reuse: a consumer may keep its cluster for the next job of the same campaign.

At most one cluster is kept. A job of another campaign, another cluster spec or size, an idle
timer, or the consumer's shutdown tears it down. Off by default: ephemeral clusters are the
design (nothing leaks between jobs); warm reuse trades that for start-up time on small jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from cluster.base import ClusterBackend


class WarmPool:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._key: Hashable | None = None
        self._backend: ClusterBackend | None = None
        self._timer: threading.Timer | None = None

    def take(self, key: Hashable) -> ClusterBackend | None:
        """The kept cluster if it fits ``key`` and is still alive; any other is torn down."""
        with self._lock:
            backend, kept_key = self._backend, self._key
            self._backend, self._key = None, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if backend is None:
            return None
        alive = backend.client is not None and backend.client.status == "running"
        if kept_key == key and alive:
            return backend
        backend.close()
        return None

    def give(self, key: Hashable, backend: ClusterBackend) -> None:
        with self._lock:
            previous = self._backend
            self._backend, self._key = backend, key
            self._timer = threading.Timer(self.idle_s, self._expire, args=(backend,))
            self._timer.daemon = True
            self._timer.start()
        if previous is not None and previous is not backend:
            previous.close()

    def _expire(self, backend: ClusterBackend) -> None:
        with self._lock:
            if self._backend is not backend:
                return  # taken by a job meanwhile
            self._backend, self._key = None, None
        backend.close()

    def close(self) -> None:
        with self._lock:
            backend = self._backend
            self._backend, self._key = None, None
            if self._timer is not None:
                self._timer.cancel()
        if backend is not None:
            backend.close()

    @property
    def holding(self) -> bool:
        return self._backend is not None
