"""Exporting a committed BIDS job as BIDS-Derivatives: its maps copied to BIDS names at the
results root, each beside a sidecar, plus the dataset's ``dataset_description.json``,
``.bidsignore`` and ``README`` (names and contents: ``shared.derivatives``).

The manifest stays the commit point: an export runs after it, for a job that committed, lost
the race to another attempt or was found committed, so a retry after a failed export exports
again. Every step is idempotent. A name belongs to the job its sidecar names: the sidecar is
claimed first, with a conditional put, so two jobs exporting the same name at once cannot end
with one's map beside the other's sidecar; a name another job owns is never overwritten (one
parameter set per derivatives dataset), nor is a results root whose description links another
source dataset.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from shared import derivatives
from shared.derivatives import Output, Series
from shared.manifest import MANIFEST, Manifest
from shared.store import ObjectStore

log = logging.getLogger(__name__)

DESCRIPTION = "dataset_description.json"


def export(results: ObjectStore, manifest: Manifest) -> list[str]:
    """Export one committed job below ``results`` (its results root); returns the keys of its
    derivatives (maps and sidecars, written now or by an earlier export of the same job).
    Nothing for an HCP input or a pipeline without BIDS maps."""
    series = Series.of(manifest.input_uri)
    if series is None or manifest.pipeline not in derivatives.DIFFUSION_PIPELINES:
        return []
    if not _root_files(results, series, manifest):
        return []
    prefix = derivatives.result_prefix(manifest)
    found = derivatives.outputs(series, manifest, results.uri_for(f"{prefix}/{MANIFEST}"))
    keys: list[str] = []
    with tempfile.TemporaryDirectory(prefix="voxfleet-bids-") as scratch:
        for output in found:
            if _export_one(results, prefix, manifest.job_key, output, Path(scratch)):
                keys += [output.key, output.sidecar_key]
    return keys


def _root_files(results: ObjectStore, series: Series, manifest: Manifest) -> bool:
    """The dataset's own files (first writer wins); False when the root already describes
    derivatives of another source dataset."""
    wanted = derivatives.dataset_description(series, manifest)
    if not results.put_if_absent(DESCRIPTION, derivatives.to_json(wanted)):
        links = _links(results.get_bytes(DESCRIPTION))
        if links.get(series.link) != series.link_uri:
            log.warning(
                "%s describes derivatives of %s, not %s; job %s not exported there "
                "(one source dataset per derivatives dataset)",
                results.uri_for(DESCRIPTION),
                links.get(series.link) or "another dataset",
                series.link_uri,
                manifest.job_key[:16],
            )
            return False
    results.put_if_absent(".bidsignore", derivatives.bidsignore().encode())
    results.put_if_absent("README", derivatives.README.encode())
    return True


def _links(description: bytes) -> dict[str, str]:
    try:
        value = json.loads(description)
    except ValueError:
        return {}
    links = value.get("DatasetLinks") if isinstance(value, dict) else None
    return {str(k): str(v) for k, v in links.items()} if isinstance(links, dict) else {}


def _export_one(
    results: ObjectStore, prefix: str, job_key: str, output: Output, scratch: Path
) -> bool:
    """Claim ``output``'s name through its sidecar, then copy the map; False if another job
    owns the name."""
    sidecar = derivatives.to_json(output.sidecar)
    if not results.put_if_absent(output.sidecar_key, sidecar):
        existing = results.get_bytes(output.sidecar_key)
        owner = derivatives.owner(existing)
        if owner != job_key:
            log.warning(
                "%s belongs to job %s; job %s's %s not exported "
                "(one parameter set per derivatives dataset)",
                results.uri_for(output.key),
                owner[:16] if owner else "outside voxfleet",
                job_key[:16],
                output.source,
            )
            return False
        if existing != sidecar:  # same job, written by another voxfleet version
            results.put_bytes(output.sidecar_key, sidecar)
    # Puts are all-or-nothing, so a map of the listed size is this job's, copied before.
    if results.exists(output.key) and results.size(output.key) == output.bytes:
        return True
    local = scratch / output.key.rsplit("/", 1)[-1]
    results.get_file(f"{prefix}/{output.source}", local)
    try:
        results.put_file(output.key, local)
    finally:
        local.unlink(missing_ok=True)  # maps are tens of MB: one on disk at a time
    return True
