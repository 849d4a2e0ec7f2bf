"""Publishing a finished attempt: ``timing.json`` first, ``manifest.json`` last and conditional.

Every attempt writes below its own ``{job}/{attempt}/`` prefix, so two deliveries of one job
(a redelivery after a visibility timeout, a consumer that was presumed dead) never write the
same object. Exactly one manifest can be created per job; the attempt that loses the race
deletes its own files. An attempt that died without cleaning up (SIGKILL, a lost node) leaves
an orphan folder that no manifest names; the attempt that commits, or later finds the job
committed, removes every such folder (``remove_orphans``).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.jobspec import JobSpec
from shared.manifest import MANIFEST, Manifest
from shared.store import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

UPLOAD_THREADS = 8  # S3 PUT latency dominates small files; a few in flight hide it


def upload_all(out: ObjectStore, uploads: dict[str, Path]) -> list[ObjectInfo]:
    """Upload the consumer's local outputs (maps, QC images) into the attempt's prefix."""
    if not uploads:
        return []
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(uploads))) as pool:
        return list(pool.map(lambda item: out.put_file(*item), uploads.items()))


@dataclass(frozen=True)
class Publication:
    manifest: Manifest
    manifest_uri: str
    committed: bool  # False: another attempt committed first and its manifest stands


def publish(
    results: ObjectStore,
    spec: JobSpec,
    attempt: str,
    files: list[ObjectInfo],
    summary: dict[str, Any],
    timing: dict[str, Any],
    provenance: dict[str, Any] | None = None,
) -> Publication:
    job = results.child(spec.result_prefix)
    timing_info = job.put_bytes(
        f"{attempt}/timing.json", json.dumps(timing, indent=2, sort_keys=True).encode()
    )
    listed = [ObjectInfo(f"{attempt}/{f.key}", f.bytes, f.sha256) for f in files]
    manifest = Manifest.for_job(spec, attempt, [*listed, timing_info], summary, provenance)
    if job.put_if_absent(MANIFEST, manifest.to_bytes()):
        return Publication(manifest, job.uri_for(MANIFEST), True)
    job.delete_prefix(attempt)
    winner = Manifest.model_validate_json(job.get_bytes(MANIFEST))
    return Publication(winner, job.uri_for(MANIFEST), False)


def remove_orphans(job: ObjectStore, committed_attempt: str) -> int:
    """Delete the folders of every attempt but the committed one; returns how many objects.

    Safe at any time once a manifest exists: no other attempt can ever commit, so nothing they
    wrote can become visible. An attempt still running elsewhere (its lease lost) only loses
    files it would delete itself when its conditional commit fails.
    """
    removed = 0
    for name in job.children():
        if name != committed_attempt:
            count = job.delete_prefix(name)
            log.info("removed %d objects of orphaned attempt %s in %s", count, name, job.uri)
            removed += count
    return removed
