"""A running job's lease: one holder per job key, kept alive by a heartbeat.

Redis redelivers a message whose consumer has not acked it within the visibility timeout, even
if that consumer is alive and still working (celery#5935). The lease tells the redelivered copy
that the work is in hand: it defers instead of running it twice. The holder renews the lease
every third of its TTL from a background thread; a consumer that dies (SIGKILL, lost node)
stops renewing, and the lease expires so that the next delivery runs the job.

A lease is an optimisation of the common case, not the guarantee: a holder that stalls longer
than the TTL (a frozen VM, a Redis restart that lost the key) can find that another attempt took
over. It notices at its next stage boundary and stops (``LeaseLost``), and if both still reach
the commit, the manifest's conditional write lets exactly one of them publish.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

import redis

from shared.errors import VoxfleetError

log = logging.getLogger(__name__)

LEASE_PREFIX = "voxfleet:lease:"

# Renew or release only if the lease is still ours: compare-and-set in one round trip.
_IF_MINE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call({}) else return 0 end"
_RENEW = _IF_MINE.format("'pexpire', KEYS[1], ARGV[2]")
_RELEASE = _IF_MINE.format("'del', KEYS[1]")


class LeaseLost(VoxfleetError):
    """Another attempt holds this job's lease now; this one must not publish."""


class Lease:
    """``with Lease(...) as lease`` once ``acquire()`` returned True: heartbeat while inside."""

    def __init__(self, client: redis.Redis, job_key: str, owner: str, ttl_s: float) -> None:
        self.redis = client
        self.key = LEASE_PREFIX + job_key
        self.owner = owner
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        return bool(self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def holder(self) -> str | None:
        value: Any = self.redis.get(self.key)
        return None if value is None else str(value)

    def check(self) -> None:
        """Raise ``LeaseLost`` if another attempt holds the lease (an expired, unclaimed lease
        is re-taken: nobody else is running the job)."""
        if self._lost.is_set() or not self._renew():
            if self.acquire():
                self._lost.clear()
                return
            raise LeaseLost(f"lease of {self.key} taken over by {self.holder()!r}")

    def _renew(self) -> bool:
        try:
            return bool(self.redis.eval(_RENEW, 1, self.key, self.owner, self.ttl_ms))
        except redis.RedisError as exc:
            # Redis unreachable: the lease may survive; the conditional commit is the backstop.
            log.warning("could not renew %s: %s", self.key, exc)
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            if not self._renew() and not self._lost.is_set():
                log.warning("lease %s lost; this attempt will stop at its next stage", self.key)
                self._lost.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.owner)
        except redis.RedisError as exc:  # it expires by itself
            log.warning("could not release %s: %s", self.key, exc)

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name="voxfleet-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
