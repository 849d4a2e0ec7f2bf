"""The ``voxfleet`` command line (Typer). Everything a user types starts here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from producer.cli_campaign import app as campaign_app
from producer.cli_synth import app as synth_app
from producer.console import console, err_console, friendly
from shared.checks import describe
from shared.jobspec import JobSpec
from shared.params import PIPELINE_PARAMS
from shared.settings import get_settings, use_settings

app = typer.Typer(
    name="voxfleet",
    help="Batch volumetric science over Redis, Celery and Dask: enqueue jobs, run consumers, "
    "read results from S3. Start with `voxfleet demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(synth_app, name="synth")
app.add_typer(campaign_app, name="campaign")


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Where inputs, results and logs go.")] = Path(
        "voxfleet-demo"
    ),
    subjects: Annotated[
        int, typer.Option(min=1, max=8, help="Synthetic HCP-layout subjects (dti jobs).")
    ] = 2,
    volumes: Annotated[
        int, typer.Option(min=0, max=8, help="Micro-CT phantoms, 128^3 (microstructure jobs).")
    ] = 1,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Dask workers per job.")] = 2,
) -> None:
    """Run everything on this machine: a private Redis-protocol server, one consumer, a local
    Dask cluster; two synthetic subjects through the `dti` pipeline and a fiber phantom through
    `microstructure`; results in ./voxfleet-demo."""
    from producer.demo import run_demo

    raise typer.Exit(
        run_demo(out, subjects=subjects, volumes=volumes, workers=workers, console=console)
    )


@app.command()
@friendly
def worker(
    queue: Annotated[str | None, typer.Option(help="Queue to consume (default: settings).")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="Cluster for jobs that name none: local, local:N, tcp://host:8786."),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Consumer name (default unique).")] = None,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm/--ephemeral",
            help="Keep the cluster for the next job of the same campaign (torn down when idle).",
        ),
    ] = False,
    max_jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Stop (warm shutdown) after this many jobs; 1 = one pod per message (KEDA "
            "ScaledJob).",
        ),
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(
            min=1, help="Stop when no job has started for this many seconds (default: never)."
        ),
    ] = None,
) -> None:
    """Run one consumer: a Celery worker with the solo pool, one job at a time."""
    settings = get_settings()
    updates: dict[str, Any] = {}
    if queue:
        updates["queue"] = queue
    if warm:
        updates["keep_warm"] = True
    if cluster:
        from cluster import backend_for

        backend_for(cluster, settings)  # validate before connecting to anything
        updates["default_cluster"] = cluster
    use_settings(settings.model_copy(update=updates))
    from consumers.app import app as celery_app
    from consumers.lifetime import Lifetime

    Lifetime(get_settings(), max_jobs=max_jobs, idle_exit_s=idle_exit).connect()

    celery_app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--queues={updates.get('queue', settings.queue)}",
            "--prefetch-multiplier=1",
            "--task-events",
            f"--loglevel={loglevel}",
            # Gossip and mingle cost every consumer O(fleet) chatter and buy us nothing.
            "--without-gossip",
            "--without-mingle",
            f"--hostname={hostname or f'voxfleet-{os.getpid()}@%h'}",
        ]
    )


@app.command()
def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print the heartbeat as JSON.")] = False,
) -> None:
    """Exit 0 if this machine's consumer is alive (its heartbeat file is fresh), else 1.

    Reads VOXFLEET_HEARTBEAT_FILE only: no broker round trip, so a consumer deep in a long job is
    still healthy, and a Redis outage does not restart a fleet. The image's HEALTHCHECK runs the
    same check as `python -m shared.heartbeat`, which skips importing Celery.
    """
    from shared.heartbeat import check_configured

    result = check_configured()
    if as_json:
        print(json.dumps({"healthy": result.healthy, "reason": result.reason, **result.beat}))
    elif result.healthy:
        console.print(f"healthy: {result.reason}", highlight=False)
    else:
        err_console.print(f"[red]unhealthy:[/red] {result.reason}", highlight=False)
    raise typer.Exit(0 if result.healthy else 1)


@app.command()
@friendly
def enqueue(
    pipeline: Annotated[str, typer.Argument(help=f"One of: {', '.join(PIPELINE_PARAMS)}.")],
    input_uri: Annotated[
        str,
        typer.Argument(
            help="Subject or volume: a path or s3:// URI (bundles: a committed tractography "
            "result, {results}/{subject}/tractography/{key}, with --param atlas=URI)."
        ),
    ],
    results: Annotated[str, typer.Option("--results", help="Results root (path or s3://).")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Pipeline parameter NAME=VALUE; repeat.")
    ] = None,
    cluster: Annotated[str | None, typer.Option(help="Cluster spec for this job.")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue (default: settings).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the job and show its state.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Enqueue one job. The job is validated here, before anything reaches the queue."""
    from pydantic import ValidationError

    from producer.jobs import parse_params, submit, wait_for

    settings = get_settings()
    try:
        spec = JobSpec(
            pipeline=pipeline,  # validated by pydantic
            input_uri=input_uri,
            results_uri=results,
            params=parse_params(param or []),
            cluster=cluster,
        )
    except ValidationError as exc:
        err_console.print(f"[red]error:[/red] invalid job: {describe(exc)}", highlight=False)
        raise typer.Exit(2) from None
    settings.check_results(spec.results_uri)
    submit([spec], settings, queue=queue)
    if not wait:
        if as_json:
            print(json.dumps({"job_id": spec.job_id, "job_key": spec.key, "state": "queued"}))
        else:
            console.print(f"queued {spec.pipeline} job [bold]{spec.job_id}[/bold] ({spec.subject})")
        return
    with console.status(f"waiting for {spec.job_id} ..."):
        records = wait_for([spec.job_id], settings)
    _show_status(spec.job_id, records[spec.job_id], as_json)
    raise typer.Exit(0 if records[spec.job_id]["state"] == "done" else 1)


@app.command()
@friendly
def status(
    job: Annotated[str, typer.Argument(help="Job id (printed by enqueue).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """One job: state, reason, attempts, result and per-stage timings."""
    from producer.jobs import ledger_for

    record = ledger_for(get_settings()).get(job)
    if record is None:
        err_console.print(f"[red]error:[/red] no job {job!r} in this broker")
        raise typer.Exit(2)
    _show_status(job, record, as_json)


def _provenance(record: dict[str, Any]) -> dict[str, Any] | None:
    """The committed manifest's provenance (what made the result), if the job has one."""
    from shared.errors import VoxfleetError
    from shared.manifest import Manifest
    from shared.store import open_store, split_uri

    if record.get("state") != "done" or not record.get("result"):
        return None
    parent, name = split_uri(str(record["result"]))
    try:
        manifest = Manifest.model_validate_json(open_store(parent, get_settings()).get_bytes(name))
    except (VoxfleetError, ValueError):
        return None
    return manifest.provenance or None


def _show_status(job_id: str, record: dict[str, Any], as_json: bool) -> None:
    origin = _provenance(record)
    if as_json:
        shown = {k: v for k, v in record.items() if k != "spec"}
        print(json.dumps({"job_id": job_id, **shown, "provenance": origin}))
        return
    colour = {"done": "green", "failed": "red"}.get(record.get("state", ""), "yellow")
    console.print(
        f"job {job_id}: [{colour}]{record.get('state')}[/{colour}]"
        + (f" - {record['reason']}" if record.get("reason") else ""),
        highlight=False,
    )
    for name in ("pipeline", "subject", "attempts", "consumer", "result"):
        if record.get(name):
            console.print(f"  {name}: {record[name]}", highlight=False)
    if origin:
        made = origin.get("software") or {}
        packages = ", ".join(f"{k} {v}" for k, v in (made.get("packages") or {}).items())
        console.print(
            f"  software: voxfleet {made.get('voxfleet')} "
            f"(commit {made.get('git_commit') or 'unknown'}), Python {made.get('python')}"
            + (f", image {made['image_digest']}" if made.get("image_digest") else ""),
            highlight=False,
        )
        console.print(f"  libraries: {packages}", highlight=False)
        read = origin.get("inputs") or {}
        parts = [read] if "uri" in read else [v for v in read.values() if isinstance(v, dict)]
        for part in parts:
            count = part.get("count", len(part.get("objects") or []))
            console.print(f"  input: {count} object(s) at {part.get('uri')}", highlight=False)
    timing = record.get("timing") or {}
    stages = timing.get("stages_s") or {}
    if stages:
        table = Table("stage", "seconds", title=f"timings (wall {timing.get('wall_s', 0):.2f} s)")
        for name, seconds in stages.items():
            table.add_row(name, f"{seconds:.2f}")
        console.print(table)


def main() -> None:  # pragma: no cover - console entry for `python -m producer`
    app(prog_name="voxfleet")
    sys.exit(0)
