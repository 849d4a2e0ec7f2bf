"""``voxfleet campaign ...``: submit, status, retry, cancel, report."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from producer.campaign import (
    CampaignStatus,
    Plan,
    PlanError,
    campaign_status,
    cancel_campaign,
    plan_campaign,
    retry_campaign,
    submit_campaign,
)
from producer.console import console, err_console, friendly
from producer.jobs import parse_params
from shared.jobspec import result_prefix
from shared.layouts import LAYOUTS
from shared.manifest import MANIFEST, Manifest
from shared.params import PIPELINE_PARAMS
from shared.settings import get_settings
from shared.store import open_store

app = typer.Typer(
    help="Many jobs as one: submit, watch, retry, cancel, report.", no_args_is_help=True
)
STATE_COLOURS = {"done": "green", "failed": "red", "cancelled": "magenta", "running": "cyan"}
SHOWN = 20  # rows of a plan, bad rows and unusable series printed; the rest are counted
DIFFUSION = [name for name, kind in PIPELINE_PARAMS.items() if kind.input_marker is None]
MARKED = [name for name, kind in PIPELINE_PARAMS.items() if kind.input_marker is not None]


@app.command()
@friendly
def submit(
    name: Annotated[str, typer.Argument(help="Campaign name (letters, digits, '_', '-', '.').")],
    pipeline: Annotated[str, typer.Argument(help=f"One of: {', '.join(PIPELINE_PARAMS)}.")],
    inputs: Annotated[
        str,
        typer.Option(help="A .csv/.txt manifest, or a folder/s3:// prefix to list for inputs."),
    ],
    results: Annotated[str, typer.Option(help="Results root (path or s3://).")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Pipeline parameter NAME=VALUE; repeat.")
    ] = None,
    only_missing: Annotated[
        bool,
        typer.Option(
            "--only-missing",
            help="Skip jobs already committed (with every step that follows them, such as "
            "bundles and profiles) or in flight; a chain resumes at its first missing step.",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    layout: Annotated[
        str | None,
        typer.Option(
            help=f"When listing a prefix for {', '.join(DIFFUSION)}: the dataset's layout, "
            f"one of {', '.join(LAYOUTS)} (default: detected)."
        ),
    ] = None,
    marker: Annotated[
        str | None,
        typer.Option(
            help=f"When listing a prefix for {', '.join(MARKED)}: the file that makes a folder "
            "an input (default: the pipeline's own)."
        ),
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue for this campaign's jobs.")] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="0 runs first (kombu).")] = 0,
    cluster: Annotated[str | None, typer.Option(help="Cluster spec for every job.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Validate every input, then enqueue the campaign in pipelined batches."""
    settings = get_settings()
    try:
        plan = plan_campaign(
            name,
            pipeline,
            inputs,
            results,
            parse_params(param or []),
            settings,
            marker=marker,
            layout=layout,
            only_missing=only_missing,
            queue=queue,
            priority=priority,
            cluster=cluster,
        )
    except PlanError as exc:
        for problem in exc.problems[:SHOWN]:
            err_console.print(f"[red]error:[/red] {problem}", highlight=False)
        if len(exc.problems) > SHOWN:
            err_console.print(f"... and {len(exc.problems) - SHOWN} more; nothing was enqueued")
        raise typer.Exit(2) from None
    outcome = {
        "campaign": name,
        "jobs": len(plan.all_jobs),
        "to_enqueue": len(plan.to_enqueue),
        "skipped": len(plan.skipped),
        "queue": plan.queue,
        "found_by": plan.found_by,
        "unusable": plan.unusable,
        "dry_run": dry_run,
    }
    if dry_run:
        if as_json:
            print(json.dumps(outcome))
            return
        table = Table("subject", "input", "job key", title=f"plan for {name} ({pipeline})")
        for spec in plan.to_enqueue[:SHOWN]:
            table.add_row(spec.subject, spec.input_uri, spec.key[:16])
        console.print(table)
        _print_unusable(plan)
        console.print(
            f"{len(plan.to_enqueue)} to enqueue, {len(plan.skipped)} skipped, "
            f"{len(plan.unusable)} unusable ({plan.found_by}; dry run: nothing enqueued)"
        )
        return
    if not as_json:
        _print_unusable(plan)
    started = time.perf_counter()
    with Progress(console=console, transient=True, disable=as_json) as progress:
        bar = progress.add_task("enqueueing", total=len(plan.to_enqueue))
        sent = submit_campaign(plan, settings, lambda n: progress.advance(bar, n))
    seconds = time.perf_counter() - started
    if as_json:
        print(json.dumps({**outcome, "enqueued": sent, "seconds": round(seconds, 3)}))
    else:
        console.print(
            f"campaign [bold]{name}[/bold]: enqueued {sent} job(s) in {seconds:.2f} s, "
            f"skipped {len(plan.skipped)}; queue {plan.queue!r}"
        )


def _print_unusable(plan: Plan) -> None:
    """The listed series left out of the plan, by name (on stderr: stdout may be JSON)."""
    if not plan.unusable:
        return
    total = len(plan.unusable) + len(plan.all_jobs)
    err_console.print(
        f"[yellow]{len(plan.unusable)} of {total} inputs unusable, left out:[/yellow]",
        highlight=False,
    )
    for problem in plan.unusable[:SHOWN]:
        err_console.print(f"  {problem}", highlight=False)
    if len(plan.unusable) > SHOWN:
        err_console.print(f"  ... and {len(plan.unusable) - SHOWN} more", highlight=False)


def _render(status: CampaignStatus) -> Group:
    counts = status.counts
    total = len(status.jobs)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    finished = sum(counts.get(s, 0) for s in ("done", "failed", "cancelled"))
    progress.add_task("finished", total=total or 1, completed=finished)
    progress.add_task("[green]done", total=total or 1, completed=counts.get("done", 0))
    table = Table("state", "jobs", title=f"campaign {status.name} ({status.record.get('status')})")
    for state, n in sorted(counts.items()):
        colour = STATE_COLOURS.get(state, "yellow")
        table.add_row(f"[{colour}]{state}[/{colour}]", str(n))
    rate, eta = status.throughput_per_h(), status.eta_s()
    lines = [f"throughput: {rate:.1f} jobs/h" if rate else "throughput: -"]
    if eta is not None:
        lines.append(f"ETA: {eta / 60:.1f} min")
    if status.source == "store":
        lines.append("rebuilt from the store (no campaign record in Redis)")
    failures = Table("subject", "job", "reason", title="failures")
    for job in [j for j in status.jobs if j.state == "failed"][:15]:
        failures.add_row(job.subject, job.job_id[:12], job.reason)
    parts: list[Any] = [table, progress, "  ".join(lines)]
    if failures.row_count:
        parts.append(failures)
    return Group(*parts)


@app.command()
@friendly
def status(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until finished.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print counts as JSON.")] = False,
    results: Annotated[
        str | None, typer.Option(help="Results root, to rebuild status when Redis lost it.")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Counts by state, throughput, ETA and failures; manifests in the store win over Redis."""
    settings = get_settings()
    current = campaign_status(name, settings, results)
    if as_json:
        print(json.dumps(current.as_dict()))
        return
    if not watch:
        console.print(_render(current))
        return
    with Live(_render(current), console=console, refresh_per_second=4) as live:
        while not current.finished:
            time.sleep(interval)
            current = campaign_status(name, settings, results)
            live.update(_render(current))


@app.command()
@friendly
def retry(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    failed_only: Annotated[
        bool, typer.Option("--failed-only", help="Only failed jobs, not cancelled ones.")
    ] = False,
) -> None:
    """Re-enqueue failed (and cancelled) jobs; committed ones are never re-run."""
    sent = retry_campaign(name, get_settings(), failed_only=failed_only)
    console.print(f"campaign {name}: re-enqueued {sent} job(s)")


@app.command()
@friendly
def cancel(name: Annotated[str, typer.Argument(help="Campaign name.")]) -> None:
    """Drop queued jobs; running ones stop at their next stage boundary, publishing nothing."""
    outcome = cancel_campaign(name, get_settings())
    console.print(
        f"campaign {name} cancelled: {outcome['queued_cancelled']} queued job(s) dropped, "
        f"{outcome['running_stopping']} running job(s) stopping"
    )


@app.command()
@friendly
def report(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[Path, typer.Option(help="Folder for index.html and the plots.")],
    results: Annotated[
        str | None, typer.Option(help="Results root, when Redis no longer has the campaign.")
    ] = None,
    cost_per_core_hour: Annotated[
        float, typer.Option(min=0, help="USD per core-hour for the cost estimate.")
    ] = 0.05,
) -> None:
    """An HTML page with PNG plots built from the jobs' timing.json files."""
    from producer.report import JobRow, build_report
    from producer.results import JobRef, profile_rows, with_followups

    settings = get_settings()
    current = campaign_status(name, settings, results)
    store = open_store(current.record["results_uri"], settings)
    pipeline = current.record["pipeline"]
    # Every step of every chain (tractography -> bundles -> profiles) is a job of the report.
    first = [JobRef(j.job_id, pipeline, j.subject, j.key, j.state, j.reason) for j in current.jobs]
    jobs = with_followups(current.record, first)

    def timing_of(job: JobRef) -> dict[str, Any] | None:
        prefix = result_prefix(job.pipeline, job.subject, job.key)
        if not store.exists(f"{prefix}/{MANIFEST}"):
            return None
        manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/{MANIFEST}"))
        timing_key = next(
            (f["key"] for f in manifest.files if f["key"].endswith("timing.json")), None
        )
        return json.loads(store.get_bytes(f"{prefix}/{timing_key}")) if timing_key else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        timings = list(pool.map(timing_of, jobs))
    rows = [
        # A follow-up's record is not indexed by the campaign: its manifest says it is done.
        JobRow(j.job_id, j.subject, "done" if t is not None else j.state, j.reason, t)
        for j, t in zip(jobs, timings, strict=True)
    ]
    profiles = profile_rows(store, jobs) if any(j.pipeline == "profiles" for j in jobs) else None
    index = build_report(
        name,
        rows,
        out,
        cost_per_core_hour=cost_per_core_hour,
        params=current.record.get("params"),
        profiles=profiles,
    )
    console.print(f"report: {index}")


@app.command()
@friendly
def results(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[
        Path, typer.Option(help="The table to write: FILE.parquet or FILE.csv (by extension).")
    ],
    results_uri: Annotated[
        str | None,
        typer.Option("--results", help="Results root, when Redis no longer has the campaign."),
    ] = None,
    profiles: Annotated[
        bool,
        typer.Option(
            "--profiles",
            help="The long table of every profiles job's tract profiles (subject, bundle, node, "
            "metric, value) instead of a row per job.",
        ),
    ] = False,
) -> None:
    """One table for the whole campaign from its committed manifests: a row per job with its
    subject and session, the summary figures, timings, software and result URI."""
    from producer.results import JobRef, campaign_rows, profile_rows, with_followups, write_table

    settings = get_settings()
    current = campaign_status(name, settings, results_uri)
    store = open_store(current.record["results_uri"], settings)
    pipeline = current.record["pipeline"]
    first = [JobRef(j.job_id, pipeline, j.subject, j.key, j.state, j.reason) for j in current.jobs]
    jobs = with_followups(current.record, first)
    if profiles:
        found = profile_rows(store, jobs)
        written = write_table(found, out)
        console.print(f"{written}: {len(found)} profile values", highlight=False)
        return
    rows = campaign_rows(store, jobs)
    written = write_table(rows, out)
    done = sum(1 for row in rows if row["state"] == "done")
    console.print(f"{written}: {len(rows)} jobs, {done} with results", highlight=False)
