"""Scale-in: on SIGTERM a consumer gives its job a grace period, then requeues it and exits.

Celery's SIGTERM is a warm shutdown: it waits for the running job however long it takes, and an
orchestrator's grace period (Kubernetes: 30 s by default) ends in SIGKILL long before a
two-hour job does; the message then waits out the whole visibility timeout (hours) before any
consumer sees it again. Celery's own soft shutdown does not help a ``-P solo`` consumer: it
sleeps in the signal handler on the thread that runs the job (freezing it) and then asks the
pool to terminate the job, which the solo pool cannot do.

So voxfleet keeps Celery's warm shutdown and adds a deadline: ``soft_shutdown_s`` after the
signal, an alarm raises ``ShutdownRequested`` in the job's thread. It unwinds the job like any
error -- the attempt's files are deleted, the cluster is torn down -- and the task rejects its
message with ``requeue=True``, which puts it back at the head of the queue at once. A job that
finishes within the grace period is simply acked. Either way the consumer then exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


class ShutdownRequested(BaseException):
    """The consumer is shutting down and the job's grace period is over.

    A ``BaseException``: no ``except Exception`` in a pipeline or library may swallow it.
    """


_state = {"running": False, "armed": False}
_lock = threading.Lock()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    with _lock:
        fire = _state["running"]
        _state["running"] = False  # once: cleanup code that follows must not be interrupted
    if fire:
        raise ShutdownRequested("consumer shutting down; the job's grace period is over")


def arm(grace_s: float) -> None:
    """Called once the consumer was told to stop (from the main thread's signal handler)."""
    with _lock:
        if _state["armed"]:
            return
        _state["armed"] = True
    signal.signal(signal.SIGALRM, _on_alarm)
    # setitimer, not alarm(): fractional seconds, and 0 would mean "never".
    signal.setitimer(signal.ITIMER_REAL, max(grace_s, 0.001))
    log.warning("shutting down: a running job has %.1f s to finish before it is requeued", grace_s)


@contextmanager
def job_in_progress() -> Iterator[None]:
    """Marks the span in which the alarm may interrupt the job."""
    with _lock:
        _state["running"] = True
    try:
        yield
    finally:
        with _lock:
            _state["running"] = False
