"""Bulk enqueue: Celery protocol-2 messages written straight into Redis, pipelined.

``apply_async`` in a loop costs a round trip and kombu's per-message machinery for every job
(~1k messages/s); a 100k-job campaign must not wait on that. We build the very envelope that
kombu's Redis transport would LPUSH (same headers, properties and base64 body), so a consumer
cannot tell the two apart, and push a few thousand per command: one LPUSH of the messages and
one HSET of the campaign's job index per batch.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from bisect import bisect
from collections.abc import Callable, Iterable

import redis

from consumers.ledger import CAMPAIGN_PREFIX
from shared.jobspec import TASK_NAME, JobSpec
from shared.settings import Settings

BATCH = 2000  # messages per command: large enough to amortise a round trip, small for memory
# kombu's Redis transport emulates priorities with one list per step; a message goes to the
# list of the highest step not above its priority, and consumers drain lower steps first.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"  # as Celery names a producer
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_dumps = json.JSONEncoder(separators=(", ", ": ")).encode


def queue_list(queue: str, priority: int) -> str:
    """The Redis list that kombu reads ``queue`` messages of this priority from."""
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, max(0, min(priority, 9))) - 1]
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def _template(queue: str, priority: int) -> str:
    """Every message of a batch shares all but five fields; render the rest once, as the exact
    JSON kombu would write, with ``{placeholders}`` for the per-job parts."""
    marker = "\x00{}\x00"
    fields = ("body", "id", "argsrepr", "reply_to", "delivery_tag")
    sample = {
        "body": marker.format("body"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": marker.format("id"),
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": marker.format("id"),
            "parent_id": None,
            # Display only (Flower); the full spec is in the body.
            "argsrepr": marker.format("argsrepr"),
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": marker.format("id"),
            "reply_to": marker.format("reply_to"),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": marker.format("delivery_tag"),
        },
    }
    text = _dumps(sample).replace("{", "{{").replace("}", "}}")
    for name in fields:
        text = text.replace(
            _dumps(marker.format(name))[1:-1].replace("{", "{{").replace("}", "}}"),
            "{" + name + "}",
        )
    return text


_EMBED_JSON = _dumps(_EMBED)


def envelope(
    spec: JobSpec,
    queue: str,
    priority: int = 0,
    template: str | None = None,
    reply_to: str | None = None,
) -> bytes:
    """The message kombu's Redis transport would store for ``send_task(TASK_NAME, [spec])``."""
    # pydantic's Rust serialiser writes the same JSON value as json.dumps(to_message()).
    body = f"[[{spec.model_dump_json()}], {{}}, {_EMBED_JSON}]".encode()
    # Every substituted value is JSON-safe as is: base64, hex ids, uuids, a validated subject.
    return (
        (template or _template(queue, priority))
        .format(
            body=base64.b64encode(body).decode(),
            id=spec.job_id,
            argsrepr=f"[{spec.pipeline} {spec.subject}]",
            # Celery uses one reply-to id per producer thread, not per message.
            reply_to=reply_to or uuid.uuid4(),
            delivery_tag=uuid.uuid4(),
        )
        .encode()
    )


def publish_bulk(
    specs: Iterable[JobSpec],
    settings: Settings,
    *,
    campaign: str,
    queue: str | None = None,
    priority: int = 0,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Enqueue every spec of ``campaign``: its index entry and its message, batch by batch."""
    queue = queue or settings.queue
    target = queue_list(queue, priority)
    index = f"{CAMPAIGN_PREFIX}{campaign}:jobs"
    client = redis.Redis.from_url(settings.broker_url.get_secret_value())
    # What a kombu producer declares for a direct queue; consumers declare it too.
    client.sadd(f"_kombu.binding.{queue}", f"{queue}{PRIORITY_SEP}{PRIORITY_SEP}{queue}")
    template = _template(queue, priority)
    reply_to = str(uuid.uuid4())
    sent = 0
    messages: list[bytes] = []
    entries: dict[str, str] = {}

    def flush() -> None:
        if not messages:
            return
        pipe = client.pipeline(transaction=False)
        # The index entry goes first: a consumer that takes the message at once finds its job.
        pipe.hset(index, mapping=entries)  # type: ignore[arg-type]
        pipe.expire(index, settings.state_ttl_s)
        pipe.lpush(target, *messages)
        pipe.execute()
        if progress is not None:
            progress(len(messages))
        messages.clear()
        entries.clear()

    for spec in specs:
        entries[spec.job_id] = f"{spec.subject} {spec.key}"
        messages.append(envelope(spec, queue, priority, template, reply_to))
        sent += 1
        if len(messages) >= batch:
            flush()
    flush()
    client.close()
    return sent
