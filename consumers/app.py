"""The Celery app, configured by the reliability rules (docs/architecture.md).

Only this module and ``consumers.tasks`` know about Celery. ``make_app(settings)`` builds an app
for any settings (the producer publishes through one); ``app`` is the consumer's, for
``celery -A consumers.app worker`` and ``voxfleet worker``.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.serialization import prepare_accept_content

from consumers.ledger import ledger_for_consumer
from shared.errors import ConfigError
from shared.settings import Settings, get_settings

_log = logging.getLogger(__name__)
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}
# The TLS options a rediss:// URL may carry, as redis-py names them (and reads them itself).
_TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_tls(url: str) -> tuple[str, dict[str, Any] | None]:
    """The broker URL for kombu and its TLS options (None for plain ``redis://``).

    redis-py reads ``?ssl_cert_reqs=...&ssl_ca_certs=...`` from a ``rediss://`` URL itself (the
    ledger and bulk enqueue connect that way), but kombu ignores the query and, given no
    ``broker_use_ssl``, connects with certificate checks OFF. So the same query becomes
    Celery's ``broker_use_ssl`` here, and an absent ``ssl_cert_reqs`` means *required*, as in
    redis-py: one URL, one behaviour, verified by default.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url, None
    query = dict(parse_qsl(parts.query))
    options: dict[str, Any] = {}
    reqs = query.pop("ssl_cert_reqs", "required")
    if reqs.lower() not in _CERT_REQS:
        raise ConfigError(
            f"broker URL: ssl_cert_reqs={reqs!r} is not one of required, optional, none"
        )
    options["ssl_cert_reqs"] = _CERT_REQS[reqs.lower()]
    for name in _TLS_OPTIONS[1:]:
        if name in query:
            options[name] = query.pop(name)
    rest = urlunsplit(parts._replace(query=urlencode(query)))
    return rest, options


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        # JSON only: a pickle message would be remote code execution on every consumer.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # Ack after the job, requeue if the consumer dies, hold one message at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # An unacked message is redelivered once older than this (celery#5935): longer than
        # the longest job. Conditional manifest commits make a redelivery harmless anyway.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for expired unacked messages every interval (kombu's default throttle of 10
            # would make that every 100 s): a killed consumer's job comes back promptly.
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        # A consumer that loses Redis mid-job lets the message be redelivered elsewhere.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": settings.queue,
        "task_ignore_result": True,  # job state lives in consumers.ledger, not a result backend
        # Hard/soft limits only bind prefork pools; solo consumers also enforce the job time
        # limit themselves at stage boundaries (shared.timing.StageTimer).
        "task_time_limit": settings.job_time_limit_s + 300,
        "task_soft_time_limit": settings.job_time_limit_s,
        # Scale-in: SIGTERM stays Celery's warm shutdown, bounded by consumers.shutdown (the job
        # gets settings.soft_shutdown_s, then is requeued). Celery's own soft shutdown is left
        # off: with the solo pool it freezes the job and cannot cancel it.
        # Events for Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_consumer": "consumers.app:DeadLetteringConsumer",
        "worker_hijack_root_logger": False,
    }


def make_app(settings: Settings) -> Celery:
    url, tls = broker_tls(settings.broker_url.get_secret_value())
    app = Celery("voxfleet", broker=url, set_as_current=False)
    app.conf.update(celery_config(settings))
    if tls is not None:
        app.conf.broker_use_ssl = tls
    return app


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, plus a dead-letter record for every message it cannot run.

    Celery acks (drops) undecodable or disallowed messages after logging them; we also keep the
    raw body (never deserialised) and mark the job failed so ``voxfleet status`` can say why.
    """

    def _dead_letter(self, message: Any, reason: str) -> None:
        headers = getattr(message, "headers", None) or {}
        job_id = headers.get("id") if isinstance(headers, dict) else None
        body = message.body
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else repr(body)
        ledger = ledger_for_consumer()
        ledger.dead_letter(job_id, reason, text)
        if isinstance(job_id, str) and job_id:
            ledger.record(job_id, "failed", reason=reason)

    @staticmethod
    def _undecodable(message: Any, exc: Exception) -> str:
        kind = message.content_type
        if isinstance(exc, ContentDisallowed):
            return f"rejected message: content type {kind!r} is not accepted (JSON only)"
        return f"rejected message: body does not decode as {kind!r} ({type(exc).__name__})"

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler behind two guards, so that no single message can stop a consumer.

        kombu hands ``application/data`` and ``application/text`` bodies through *whatever*
        ``accept_content`` says (they are "raw", never deserialised), and Celery then treats
        the raw bytes as a decoded body: ``TypeError``, an "unrecoverable error", a dead
        consumer, and the message restored to the queue to kill the next one. So: anything not
        in ``accept_content`` is refused here first; and a malformed message that still makes
        Celery's handler raise (a header of the wrong type, say) is dead-lettered and dropped
        instead of taking the consumer down. Connection errors still propagate (Celery
        reconnects on those)."""
        handler = super().create_task_handler(*args, **kwargs)
        accepted = prepare_accept_content(self.app.conf.accept_content)
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message: Any) -> Any:
            if message.content_type not in accepted:
                refused = ContentDisallowed(f"content type {message.content_type!r}")
                return self.on_invalid_task(None, message, refused)
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:
                self._dead_letter(
                    message, f"rejected message: malformed task message ({type(exc).__name__})"
                )
                message.reject_log_error(_log, connection_errors)
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, self._undecodable(message, exc))
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "rejected message: not a task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers or {}
        self._dead_letter(message, f"rejected message: unknown task {headers.get('task')!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        reason = (
            self._undecodable(message, exc)
            if isinstance(exc, ContentDisallowed)
            else f"rejected message: invalid task message ({exc})"
        )
        self._dead_letter(message, reason)
        super().on_invalid_task(body, message, exc)


app = make_app(get_settings())
app.conf.include = ["consumers.tasks"]
