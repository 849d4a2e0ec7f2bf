"""``voxfleet demo``: the whole system on one machine, with nothing configured.

A private Redis-protocol server, one consumer subprocess, local Dask clusters, synthetic
HCP-layout subjects (``dti`` jobs) and fiber-composite micro-CT phantoms (``microstructure``
jobs); results land in a local folder. Everything is shut down on exit, Ctrl-C included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producer.jobs import submit, wait_for
from producer.local_consumer import start_consumer, stop_consumer
from producer.server import EmbeddedRedis
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import open_store

DEMO_TIMEOUT_S = 600.0
VOLUME_SIDE = 128  # a 2 Mvoxel phantom: one compute chunk, seconds of ITK


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(out: Path, *, subjects: int, volumes: int = 1, workers: int, console: Console) -> int:
    """Returns the exit code: 0 when every job is done, 1 if any failed, 130 if interrupted."""
    # Ctrl-C or a SIGTERM anywhere below unwinds through the finally blocks, which stop the
    # consumer and the server; set explicitly because a background shell ignores SIGINT.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(out, subjects=subjects, volumes=volumes, workers=workers, console=console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: consumer and server stopped")
        return 130


def _run(out: Path, *, subjects: int, volumes: int, workers: int, console: Console) -> int:
    from producer.synth.fibers import PhantomSpec, write_phantom
    from producer.synth.hcp import write_subjects

    out = out.resolve()
    inputs, results = out / "inputs", out / "results"
    started = time.monotonic()
    console.print(f"[bold]voxfleet demo[/bold] -> {out}")
    with EmbeddedRedis(out / "redis") as server:
        console.print(f"  broker: private Redis-protocol server at 127.0.0.1:{server.port}")
        settings = Settings(broker_url=server.url, default_cluster=f"local:{workers}")
        env = {
            **os.environ,
            "VOXFLEET_BROKER_URL": server.url,
            "VOXFLEET_DEFAULT_CLUSTER": f"local:{workers}",
        }
        consumer = start_consumer(env, out / "consumer.log", "demo")
        try:
            with console.status("generating synthetic HCP-layout subjects ..."):
                ids = write_subjects(open_store(str(inputs), settings), subjects, size="small")
            console.print(f"  inputs: {len(ids)} synthetic subjects in {inputs}")
            specs = [
                JobSpec(pipeline="dti", input_uri=str(inputs / sid), results_uri=str(results))
                for sid in ids
            ]
            with console.status("generating micro-CT fiber phantoms ..."):
                for n in range(volumes):
                    uri = str(inputs / "ct" / f"sample{n + 1}.zarr")
                    shape = (VOLUME_SIDE,) * 3
                    write_phantom(uri, PhantomSpec(shape=shape, seed=n), settings)
                    specs.append(
                        JobSpec(pipeline="microstructure", input_uri=uri, results_uri=str(results))
                    )
            if volumes:
                console.print(
                    f"  inputs: {volumes} micro-CT phantom(s) ({VOLUME_SIDE}^3, ground truth "
                    f"beside each) in {inputs / 'ct'}"
                )
            submit(specs, settings)
            kinds = ", ".join(f"{n} {p}" for p, n in Counter(s.pipeline for s in specs).items())
            console.print(f"  queued {kinds} jobs; consumer log: {out / 'consumer.log'}")
            records = _watch(specs, settings, consumer, console)
        finally:
            stop_consumer(consumer, grace_s=20)
    _summary(specs, records, str(results), console)
    failed = [r for r in records.values() if r.get("state") != "done"]
    console.print(
        f"{'[red]' if failed else '[green]'}{len(records) - len(failed)}/{len(records)} jobs done"
        f"[/] in {time.monotonic() - started:.0f} s; results under {results}"
    )
    return 1 if failed else 0


def _watch(
    specs: list[JobSpec], settings: Settings, consumer: subprocess.Popen[bytes], console: Console
) -> dict[str, dict[str, Any]]:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"))
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        bars = {s.job_id: progress.add_task(s.subject, total=1, state="queued") for s in specs}

        def update(records: dict[str, dict[str, Any]]) -> None:
            if consumer.poll() is not None:
                raise RuntimeError("the consumer exited; see consumer.log")
            for job_id, record in records.items():
                state = record.get("state", "?")
                progress.update(bars[job_id], state=state, completed=state in ("done", "failed"))

        return wait_for(
            [s.job_id for s in specs], settings, timeout_s=DEMO_TIMEOUT_S, on_update=update
        )


def _summary(
    specs: list[JobSpec], records: dict[str, dict[str, Any]], results: str, console: Console
) -> None:
    table = Table(
        "input",
        "pipeline",
        "state",
        "wall s",
        "summary",
        "result (below results/)",
        title="demo results",
    )
    for spec in specs:
        record = records.get(spec.job_id, {})
        timing = record.get("timing") or {}
        table.add_row(
            spec.subject,
            spec.pipeline,
            record.get("state", "?") + (f" ({record['reason']})" if record.get("reason") else ""),
            f"{timing.get('wall_s', 0):.1f}",
            _headline(record.get("summary") or {}),
            str(record.get("result", "-")).removeprefix(results + "/"),
        )
    console.print(table)


def _headline(summary: dict[str, Any]) -> str:
    """One cell: the figure a user checks first in each pipeline's summary."""
    if isinstance(summary.get("fa_median"), float):
        return f"FA median {summary['fa_median']:.3f}"
    if "fibers" in summary:
        return f"{summary['fibers']} fibers, VF {summary['volume_fraction']:.3f}"
    return "-"
