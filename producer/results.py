"""One table for a whole campaign, from its committed manifests: what a statistician loads.

One row per job of the campaign, in subject order. The figures come from the manifests in the
results store (the only place a result exists), never from Redis: a campaign's table can be
rebuilt long after its broker records expired (``--results``). Columns:

- who: ``job_id``, ``subject``, the BIDS entities of the series (``session``, ``run``, ...;
  empty for other layouts), ``pipeline``, ``pipeline_version``, ``state``, ``reason``;
- what: every number, string or flag at the top of the job's summary (``streamlines``,
  ``wm_voxels``, ``fa_median_wm``; ``fibers``, ``volume_fraction``; ...), and one level down
  where it is a small record (``tractogram.streamlines``, ``threshold.value``);
- cost: ``wall_s``, ``queue_wait_s`` and every stage's seconds (``stage.NAME_s``) from the
  job's ``timing.json``, ``core_seconds``, ``consumer``;
- where and how: ``result_uri`` (the manifest), ``committed_at``, voxfleet's version and commit.

A campaign whose jobs are followed by others (``shared.chain``: tractography -> bundles ->
profiles) has a row for every step of every subject, each step's ``pipeline`` named. Jobs that
have not committed are rows too, with their state and reason and no figures, so the table says
what is missing. ``--profiles`` writes the long table of every ``profiles`` job's tract
profiles instead (job_id, subject, bundle, node, metric, value). Written as Parquet
(pyarrow) or CSV, chosen by the extension.
"""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from shared.errors import InvalidInput
from shared.jobspec import result_prefix
from shared.manifest import MANIFEST, Manifest
from shared.store import ObjectStore

READ_THREADS = 16  # S3 GET latency dominates small manifests; a few in flight hide it
SCALAR = (int, float, str, bool)
FORMATS = (".parquet", ".csv")


def _flatten(summary: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, SCALAR) or value is None:
            row[key] = value
        elif isinstance(value, dict) and len(value) <= 12:
            for inner, item in value.items():
                if isinstance(item, SCALAR):
                    row[f"{key}.{inner}"] = item
    return row


def job_row(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    """The columns of one committed job (None: no manifest below ``prefix``)."""
    key = f"{prefix}/{MANIFEST}"
    if not store.exists(key):
        return None
    manifest = Manifest.model_validate_json(store.get_bytes(key))
    timing_key = next((f["key"] for f in manifest.files if f["key"].endswith("timing.json")), None)
    timing = json.loads(store.get_bytes(f"{prefix}/{timing_key}")) if timing_key else {}
    summary = dict(manifest.summary)
    entities = summary.pop("entities", None) or {}
    made = manifest.provenance.get("software") or {}
    row: dict[str, Any] = {
        **{name: entities.get(name) for name in ("session", "run", "acquisition")},
        "pipeline_version": manifest.pipeline_version,
        **_flatten({k: v for k, v in summary.items() if k not in ("shards", "bundles")}),
        "wall_s": timing.get("wall_s"),
        "queue_wait_s": (timing.get("stages_s") or {}).get("queue_wait"),
        **{f"stage.{k}_s": v for k, v in (timing.get("stages_s") or {}).items()},
        "core_seconds": (timing.get("cluster") or {}).get("core_seconds"),
        "consumer": timing.get("consumer"),
        "result_uri": store.uri_for(key),
        "committed_at": manifest.committed_at,
        "voxfleet": made.get("voxfleet"),
        "git_commit": made.get("git_commit"),
    }
    return row


class JobRef(NamedTuple):
    """A job of the campaign as its index (or a chain) knows it, before any manifest is read."""

    job_id: str
    pipeline: str
    subject: str
    key: str
    state: str
    reason: str = ""


def with_followups(record: dict[str, Any], jobs: list[JobRef]) -> list[JobRef]:
    """Every job and the steps that follow it (``shared.chain``: tractography -> bundles ->
    profiles), subject by subject. A step's key follows from the step before it, so the chain
    is known without Redis; a step whose predecessor is unfinished is ``pending``."""
    from shared.chain import following

    out: list[JobRef] = []
    params = record.get("params") or {}
    for job in jobs:
        out.append(job)
        found = following(
            job.pipeline, params, record["results_uri"], job.subject, job.key, job.job_id
        )
        state = "not committed" if job.state == "done" else "pending"
        out += [JobRef(s.job_id, s.pipeline, s.subject, s.key, state) for s in found]
    return out


def campaign_rows(store: ObjectStore, jobs: list[JobRef]) -> list[dict[str, Any]]:
    """One row per job."""

    def one(job: JobRef) -> dict[str, Any]:
        found = job_row(store, result_prefix(job.pipeline, job.subject, job.key))
        head = {"job_id": job.job_id, "subject": job.subject, "pipeline": job.pipeline}
        if found is None:
            missing = job.state if job.state != "done" else "not committed"
            return {**head, "state": missing, "reason": job.reason}
        return {**head, "state": "done", "reason": "", **found}

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return list(pool.map(one, jobs))


def profile_rows(store: ObjectStore, jobs: list[JobRef]) -> list[dict[str, Any]]:
    """The long table of every committed ``profiles`` job's tract profiles
    (``profiles.parquet``): job_id, subject, bundle, node, metric, value."""
    import io

    import pyarrow.parquet as pq

    def one(job: JobRef) -> list[dict[str, Any]]:
        prefix = result_prefix(job.pipeline, job.subject, job.key)
        if not store.exists(f"{prefix}/{MANIFEST}"):
            return []
        manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/{MANIFEST}"))
        found = [f["key"] for f in manifest.files if f["key"].endswith("/profiles.parquet")]
        if not found:
            return []  # no bundle had two streamlines
        table = pq.read_table(io.BytesIO(store.get_bytes(f"{prefix}/{found[0]}")))
        return [{"job_id": job.job_id, **row} for row in table.to_pylist()]

    profiled = [job for job in jobs if job.pipeline == "profiles"]
    if not profiled:
        raise InvalidInput(
            "this campaign has no profiles step (tractography needs "
            "bundles_atlas; bundles runs profiles unless profiles=false)"
        )
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return [row for rows in pool.map(one, profiled) for row in rows]


def write_table(rows: list[dict[str, Any]], out: Path) -> Path:
    """Rows to ``out`` (.parquet or .csv), columns in first-seen order; written whole or not
    at all (a temporary file renamed into place)."""
    if out.suffix not in FORMATS:
        raise InvalidInput(f"{out}: the table is written as .parquet or .csv, not {out.suffix!r}")
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        with partial.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema(rows, list(columns))
        text = [f.name for f in schema if f.type == pa.string()]
        cells = [
            {**row, **{k: str(row[k]) for k in text if row.get(k) is not None}} for row in rows
        ]
        pq.write_table(pa.Table.from_pylist(cells, schema=schema), partial)
    partial.replace(out)
    return out


def _schema(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """One Arrow type per column: a column of ints and floats is float64 (a figure absent
    from some jobs is null, not a type clash), anything mixed beyond that is text."""
    import pyarrow as pa

    fields = []
    for name in columns:
        kinds = {type(row[name]) for row in rows if row.get(name) is not None}
        if kinds <= {bool} and kinds:
            kind = pa.bool_()
        elif kinds <= {int} and kinds:
            kind = pa.int64()
        elif kinds <= {int, float} and kinds:
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)
