"""A consumer's lifetime: its heartbeat, and when it stops by itself.

- **Heartbeat.** A daemon thread rewrites ``VOXFLEET_HEARTBEAT_FILE`` every
  ``heartbeat_interval_s`` seconds with the pid, the job in hand and the jobs done;
  ``voxfleet health`` (the image's HEALTHCHECK) reads it. A thread and not Celery's remote
  control, because a solo consumer's event loop is blocked for the whole job and answers no ping.
- **Stopping after N jobs** (``voxfleet worker --max-jobs N``): a warm shutdown once the Nth
  job has finished and been acked. With N = 1 this is the KEDA ScaledJob model: one pod per
  message, never scaled in under a running job (``infra/k8s/keda/``).
- **Stopping when idle** (``--idle-exit S``): a warm shutdown when no job has started S seconds
  after the consumer became ready (or after its last job), so a pod that lost the race for its
  message exits instead of waiting for work that KEDA will give to a new pod anyway.

- **Redelivery** (``consumers.redelivery``): a thread that puts the jobs of dead consumers back
  on their queues once their leases expire.

Both stops set Celery's own ``should_stop`` flag, which the worker's event loop checks between
messages: the ack of the finished job is sent first, and a message the consumer may already
have fetched is restored to the queue when its channel closes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutdown
from celery.worker import state as worker_state

from shared.heartbeat import write_beat
from shared.settings import Settings

log = logging.getLogger(__name__)
EX_OK = 0


@dataclass
class Lifetime:
    settings: Settings
    max_jobs: int | None = None
    idle_exit_s: float | None = None
    hostname: str = ""
    jobs_done: int = 0
    job: str | None = None
    stop_reason: str | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _idle: threading.Timer | None = None
    _beats: threading.Thread | None = None
    _redelivery: Any = None  # consumers.redelivery.Redelivery, once ready
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- stopping -----------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
                log.warning("consumer stopping: %s", reason)
        worker_state.should_stop = EX_OK

    def _arm_idle_timer(self) -> None:
        if self.idle_exit_s is None:
            return
        self._disarm_idle_timer()
        timer = threading.Timer(
            self.idle_exit_s,
            self.request_stop,
            args=(f"no job started within {self.idle_exit_s:g} s (--idle-exit)",),
        )
        timer.daemon = True
        timer.start()
        self._idle = timer

    def _disarm_idle_timer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    # -- heartbeat ----------------------------------------------------------------------
    def beat(self) -> None:
        path = self.settings.heartbeat_file
        if path is None:
            return
        write_beat(
            Path(path),
            hostname=self.hostname,
            job=self.job,
            jobs_done=self.jobs_done,
            stopping=self.stop_reason,
        )

    def _beat_forever(self) -> None:
        while not self._stopped.wait(self.settings.heartbeat_interval_s):
            try:
                self.beat()
            except OSError as exc:  # a full /tmp must not kill the consumer; health will tell
                log.warning("heartbeat not written: %s", exc)

    # -- Celery signals -------------------------------------------------------------------
    def on_ready(self, sender: Any = None, **_: Any) -> None:
        self.hostname = str(getattr(sender, "hostname", "") or "")
        self.beat()
        if self.settings.heartbeat_file is not None:
            self._beats = threading.Thread(
                target=self._beat_forever, name="voxfleet-heartbeat", daemon=True
            )
            self._beats.start()
        from consumers.app import app
        from consumers.redelivery import Redelivery

        self._redelivery = Redelivery(app, self.settings).start()
        self._arm_idle_timer()

    def on_task_start(self, task_id: str | None = None, **_: Any) -> None:
        self._disarm_idle_timer()
        self.job = task_id
        self.beat()

    def on_task_end(self, **_: Any) -> None:
        self.job = None
        self.jobs_done += 1
        if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
            self.request_stop(f"{self.jobs_done} job(s) done (--max-jobs {self.max_jobs})")
        else:
            self._arm_idle_timer()
        self.beat()

    def on_shutdown(self, **_: Any) -> None:
        self._disarm_idle_timer()
        self._stopped.set()
        if self._redelivery is not None:
            self._redelivery.stop()
        path = self.settings.heartbeat_file
        if path is not None:
            Path(path).unlink(missing_ok=True)  # a stopped consumer is not a healthy one

    def connect(self) -> Lifetime:
        # weak=False: the handlers are bound methods of an object only Celery's signals hold.
        worker_ready.connect(self.on_ready, weak=False)
        task_prerun.connect(self.on_task_start, weak=False)
        task_postrun.connect(self.on_task_end, weak=False)
        worker_shutdown.connect(self.on_shutdown, weak=False)
        return self
