"""Jobs that a finished job enqueues (``shared.chain``): a tractography job with ``bundles_atlas``
is followed by a ``bundles`` job over its committed result, and that by a ``profiles`` job.

A follow-up is its own job, not a stage of the first: the tractogram commits (and is never
recomputed) whatever happens to the segmentation; a bad atlas fails the bundles job alone; the
same result can be segmented again with another atlas; and the follow-up is exactly the job
`voxfleet enqueue bundles RESULT --param atlas=...` would make, with its own key, record and
retries. The price is a second cluster start and downloading the shards again.

Enqueueing is idempotent: the follow-up's id is derived from the first job's, and nothing is
sent when a record with that id exists (a redelivered tractography job that is skipped as
already committed must not queue its follow-up twice, nor reset a running one to "queued").
"""

from __future__ import annotations

import logging

from celery import Celery

from consumers.ledger import Ledger
from shared import chain
from shared.jobspec import TASK_NAME, JobSpec
from shared.manifest import MANIFEST

log = logging.getLogger(__name__)


def followups(spec: JobSpec, manifest_uri: str) -> list[JobSpec]:
    """The jobs to enqueue now that ``spec`` has committed at ``manifest_uri``."""
    step = chain.next_step(spec, manifest_uri.removesuffix(f"/{MANIFEST}"))
    return [] if step is None else [step]


def enqueue(app: Celery, ledger: Ledger, specs: list[JobSpec], queue: str) -> list[str]:
    """Record and send each follow-up that has no record yet; returns the ids of all of them."""
    for spec in specs:
        if ledger.get(spec.job_id) is not None:
            log.info("follow-up %s already exists; not sent again", spec.job_id)
            continue
        ledger.record_queued(spec)
        app.send_task(TASK_NAME, args=[spec.to_message()], task_id=spec.job_id, queue=queue)
    return [spec.job_id for spec in specs]
