"""A dead consumer's job back on its queue within about a lease TTL, not a visibility timeout.

kombu's Redis transport keeps every delivered, unacked message in the ``unacked`` hash (delivery
tag -> the message, its exchange and routing key) with its delivery time in the
``unacked_index`` sorted set, and restores it only once it is older than the visibility timeout
(12 h by default: it must exceed the longest job, celery#5935). A consumer SIGKILLed by the OOM
killer or a spot reclaim leaves its job there for that long.

The job's lease says sooner whether its holder is alive: the holder renews it every third of
``lease_ttl_s``, and it expires when the holder dies. So every consumer runs a thread that,
every ``redelivery_interval_s``, looks at the unacked messages and restores, through kombu's own
``QoS.restore_by_tag`` (the transport as it is, no patches), each one whose job

- was delivered more than ``lease_ttl_s`` ago (its consumer had time to take the lease; a
  consumer prefetches one message, the one it runs, so none waits unstarted),
- has no ETA still to come, or one that passed more than ``lease_ttl_s`` ago (a deferral or a
  retry waiting for its countdown in a live consumer holds no lease),
- is not finished (its record is not ``done``, ``failed`` or ``cancelled``: a consumer that died
  between recording the outcome and its ack leaves the message to the visibility timeout), and
- has no live lease.

A message whose lease is alive is never restored, however old. One consumer scans at a time (a
mutex key that expires with the interval); and a restore is once even when several run:
``restore_by_tag`` is a transaction that WATCHes the ``unacked`` hash, so of two restorers of
one tag one finds it gone. The visibility timeout stays the backstop for anything this misses
(Redis unreachable, every consumer gone).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from consumers.lease import LEASE_PREFIX
from consumers.ledger import FINAL_STATES, Ledger
from shared.settings import Settings

log = logging.getLogger(__name__)
MUTEX = "voxfleet:redelivery:mutex"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _eta(message: dict[str, Any]) -> float | None:
    raw = (message.get("headers") or {}).get("eta")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw)).timestamp()
    except ValueError:
        return None


class Redelivery:
    """``start()`` once the consumer is ready; ``scan()`` is one pass (tests call it)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.restored = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = uuid.uuid4().hex
        self.ledger = Ledger.from_url(settings.broker_url.get_secret_value(), settings.state_ttl_s)

    def due(self, ledger: Ledger, message: dict[str, Any], delivered_at: float, now: float) -> bool:
        """Whether a message delivered at ``delivered_at`` belongs to a dead holder."""
        grace = self.settings.lease_ttl_s
        if now - delivered_at < grace:
            return False
        eta = _eta(message)
        if eta is not None and now - eta < grace:
            return False
        job_id = (message.get("headers") or {}).get("id")
        if not job_id:
            return False  # not one of our tasks: the visibility timeout decides
        record = ledger.get(str(job_id)) or {}
        if record.get("state") in FINAL_STATES:
            return False
        key = record.get("job_key")
        return key is None or not ledger.redis.exists(LEASE_PREFIX + key)

    def scan(self, now: float | None = None) -> list[str]:
        """Restore every due message; the restored jobs' ids."""
        now = time.time() if now is None else now
        restored: list[str] = []
        ledger = self.ledger
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            client = channel.client
            hold_ms = max(1, int(self.settings.redelivery_interval_s * 1000))
            if not client.set(MUTEX, self._token, nx=True, px=hold_ms):
                return restored  # another consumer is scanning
            for tag, raw in client.hgetall(channel.unacked_key).items():
                message = json.loads(_text(raw))[0]
                delivered_at = client.zscore(channel.unacked_index_key, tag)
                if delivered_at is None or not self.due(ledger, message, delivered_at, now):
                    continue
                channel.qos.restore_by_tag(_text(tag), client=client)
                job_id = str(message["headers"]["id"])
                restored.append(job_id)
                ledger.count(job_id, "restored", 1)
                log.warning(
                    "job %s restored to its queue: delivered %.0f s ago, its lease is dead",
                    job_id,
                    now - delivered_at,
                )
        self.restored += len(restored)
        return restored

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.redelivery_interval_s):
            try:
                self.scan()
            except Exception as exc:  # Redis away: the visibility timeout still holds
                log.warning("redelivery scan failed: %s", exc)

    def start(self) -> Redelivery:
        try:
            self.scan()  # a consumer that starts finds what the dead left at once
        except Exception as exc:
            log.warning("redelivery scan failed: %s", exc)
        self._thread = threading.Thread(target=self._loop, name="voxfleet-redelivery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
