"""Campaign report: one HTML page of states, timings, failures and cost, with PNG plots beside it.

``voxfleet campaign report NAME --out DIR`` gathers one ``JobRow`` per job (its state from the
ledger, the timing.json of its committed attempt if there is one) and calls ``build_report``.
The page is plain HTML built here with ``html.escape`` on every string that came from a job;
the plots are in ``producer.report_plots``.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from producer import report_plots as plots

STATES = ("queued", "running", "retrying", "done", "failed", "cancelled")
MAX_TABLE_ROWS = 500  # tables of 100k rows freeze browsers; the plots already cover every job
PLOT_FILES = (
    "stages.png",
    "timeline.png",
    "failures.png",
    "queue_wait.png",
    "cost.png",
    "profiles.png",
)
CORE_SECONDS_DEFINITION = (
    "Core-seconds of a job = its wall time (<code>wall_s</code>) &times; the threads of its Dask "
    "cluster (<code>cluster.threads</code>). The cluster starts with the job (while the inputs "
    "load) and is released just before publishing, so this is what the job held, busy or idle. "
    "Only committed attempts are counted: timing.json does not exist for failed or superseded "
    "attempts, so the total is a lower bound. For an existing shared scheduler "
    "(<code>tcp://</code>) it is the capacity the job could use, not a bill."
)
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 code { font-size: 0.9em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f3f3f3; } tbody th { font-weight: normal; color: #555; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.92em; }
"""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    subject: str
    state: str  # "queued" | "running" | "retrying" | "done" | "failed" | "cancelled"
    reason: str = ""  # one-line failure reason ("" if none)
    timing: dict[str, Any] | None = None  # timing.json of the committed attempt, if any


def number(mapping: object, key: str) -> float | None:
    """A finite number from parsed JSON, or None: timing.json comes from many versions."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def stages_of(timing: dict[str, Any]) -> dict[str, float]:
    raw = timing.get("stages_s")
    if not isinstance(raw, dict):
        return {}
    return {str(name): v for name in raw if (v := number(raw, name)) is not None}


def wall_of(timing: dict[str, Any]) -> float | None:
    wall = number(timing, "wall_s")
    if wall is None:
        start, end = number(timing, "started_at"), number(timing, "finished_at")
        wall = end - start if start is not None and end is not None else None
    return wall


def span_of(timing: dict[str, Any]) -> tuple[float, float] | None:
    """(start, end) in epoch seconds; older timing.json files have no ``finished_at``."""
    start = number(timing, "started_at")
    if start is None:
        return None
    end = number(timing, "finished_at")
    if end is None:
        wall = number(timing, "wall_s")
        if wall is None:
            return None
        end = start + wall
    return start, max(start, end)


def core_seconds(timing: dict[str, Any]) -> float | None:
    """See ``CORE_SECONDS_DEFINITION``; None when the cluster's thread count was not recorded."""
    threads = number(timing.get("cluster"), "threads")
    wall = wall_of(timing)
    return wall * threads if threads is not None and wall is not None else None


@dataclass(frozen=True)
class Summary:
    total: int
    by_state: dict[str, int]
    committed: int  # jobs with the timing.json of a committed attempt
    walls_s: list[float]
    first_start: float | None
    last_finish: float | None
    core_seconds: float
    without_threads: int  # committed jobs whose cluster size is unknown (not in the total)
    cost_per_core_hour: float

    @property
    def core_hours(self) -> float:
        return self.core_seconds / 3600.0

    @property
    def cost(self) -> float:
        return self.core_hours * self.cost_per_core_hour

    @property
    def jobs_per_hour(self) -> float | None:
        if self.first_start is None or self.last_finish is None:
            return None
        span_h = (self.last_finish - self.first_start) / 3600.0
        return self.committed / span_h if span_h > 0 else None


def summarize(rows: list[JobRow], cost_per_core_hour: float = 0.05) -> Summary:
    states = Counter(row.state for row in rows)
    by_state = {s: states.get(s, 0) for s in STATES}
    by_state.update({s: n for s, n in sorted(states.items()) if s not in by_state})
    timings = [row.timing for row in rows if row.timing is not None]
    spans = [s for t in timings if (s := span_of(t)) is not None]
    cores = [core_seconds(t) for t in timings]
    return Summary(
        total=len(rows),
        by_state=by_state,
        committed=len(timings),
        walls_s=[w for t in timings if (w := wall_of(t)) is not None],
        first_start=min((s for s, _ in spans), default=None),
        last_finish=max((e for _, e in spans), default=None),
        core_seconds=sum(c for c in cores if c is not None),
        without_threads=sum(c is None for c in cores),
        cost_per_core_hour=cost_per_core_hour,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    unit, scale = plots.time_unit(seconds)
    return f"{seconds / scale:.1f} {unit}"


def _amount(value: float) -> str:
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _table(
    rows: list[list[str]], header: list[str] | None = None, *, table_id: str = "", numeric: int = 0
) -> str:
    """Every cell is escaped here; ``numeric`` right-aligns that many trailing columns."""
    esc = html.escape
    out = [f'<table id="{esc(table_id)}">' if table_id else "<table>"]
    if header:
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            if header is None and i == 0:
                cells.append(f"<th>{esc(value)}</th>")
            else:
                num = ' class="num"' if i >= len(row) - numeric else ""
                cells.append(f"<td{num}>{esc(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _summary_table(s: Summary) -> str:
    walls = np.asarray(s.walls_s, dtype=float)
    has_walls = walls.size > 0
    rate = s.jobs_per_hour
    span = None if s.first_start is None or s.last_finish is None else s.last_finish - s.first_start
    core_note = f" ({s.core_seconds:,.0f} core-seconds)"
    if s.without_threads:
        core_note += f"; {s.without_threads} committed jobs without a thread count not included"
    rows = [["jobs total", str(s.total)]]
    rows += [[state, str(n)] for state, n in s.by_state.items()]
    rows += [
        ["committed (with timing.json)", str(s.committed)],
        ["span (first start to last finish)", _duration(span)],
        ["throughput (committed jobs per hour)", "n/a" if rate is None else f"{rate:.1f}"],
        ["job wall time: mean", _duration(float(walls.mean()) if has_walls else None)],
        ["job wall time: median", _duration(float(np.median(walls)) if has_walls else None)],
        ["job wall time: p95", _duration(float(np.percentile(walls, 95)) if has_walls else None)],
        ["total core-hours", _amount(s.core_hours) + core_note],
        ["estimated cost", f"{_amount(s.cost)} (at {s.cost_per_core_hour:g} per core-hour)"],
    ]
    return _table(rows, table_id="summary")


def _plots_html(
    rows: list[JobRow], s: Summary, out_dir: Path, profiles: list[dict[str, Any]] | None = None
) -> str:
    """Write the PNGs; captions are written here, so no string from a job reaches them raw."""
    timings = [(row, row.timing) for row in rows if row.timing is not None]
    stages: dict[str, list[float]] = {}
    for _, t in timings:
        for name, seconds in stages_of(t).items():
            stages.setdefault(name, []).append(seconds)
    bars: list[plots.Bar] = []
    spent: list[tuple[float, float]] = []
    origin = s.first_start or 0.0
    for row, t in timings:
        span = span_of(t)
        if span is None:
            continue
        consumer = str(t.get("consumer") or "(unknown consumer)")
        bars.append(plots.Bar(consumer, span[0] - origin, span[1] - origin, row.state, row.subject))
        if (cs := core_seconds(t)) is not None:
            spent.append((span[1] - origin, cs / 3600.0))
    waits = [w for _, t in timings if (w := stages_of(t).get("queue_wait")) is not None]
    reasons = Counter(" ".join(r.reason.split()) for r in rows if r.state == "failed")

    parts: list[str] = []
    written: set[str] = set()

    def add(name: str, ok: bool, alt: str, caption: str, missing: str) -> None:
        if ok:
            written.add(name)
            img = f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'
            parts.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
        else:
            parts.append(f'<p class="note">{missing}</p>')

    nothing = "No committed job has timing data; nothing to plot."
    lost = len(timings) - len(bars)
    undrawn = f" {lost} jobs without a start time are not drawn." if lost else ""
    add(
        "stages.png",
        plots.plot_stages(stages, out_dir / "stages.png"),
        "time per stage",
        f"Seconds per stage across {len(timings)} committed jobs, in pipeline order. Stages "
        "overlap (the cluster starts while the inputs load), so they do not add up to the wall "
        "time; <code>queue_wait</code> is counted from submission and is not part of it. A wide "
        "range is drawn on a log scale, with stages under 1 ms at 1 ms.",
        nothing,
    )
    add(
        "timeline.png",
        plots.plot_timeline(bars, out_dir / "timeline.png"),
        "jobs per consumer over time",
        f"One row per consumer, one bar per job from start to finish, coloured by state; the "
        f"{plots.LABELLED_BARS} longest are labelled with their subject.{undrawn}",
        nothing,
    )
    add(
        "failures.png",
        plots.plot_failures(list(reasons.items()), out_dir / "failures.png"),
        "failures by reason",
        f"{s.by_state.get('failed', 0)} failed jobs grouped by reason (labels shortened; the full "
        "reasons are in the failures table).",
        "No failures.",
    )
    add(
        "queue_wait.png",
        plots.plot_queue_wait(waits, out_dir / "queue_wait.png"),
        "queue wait histogram",
        "Queue wait of each committed attempt, from the original submission, so a retried job's "
        "wait includes its earlier attempts.",
        nothing,
    )
    add(
        "cost.png",
        plots.plot_cost(spent, out_dir / "cost.png"),
        "cumulative core-hours",
        "Cumulative core-hours of committed jobs by finish time (definition above).",
        "No committed job recorded its cluster's thread count; no cost plot.",
    )
    if profiles is not None:
        subjects = len({row["subject"] for row in profiles})
        add(
            "profiles.png",
            plots.plot_profiles(profiles, out_dir / "profiles.png"),
            "tract profiles across subjects",
            f"Tract profiles of {subjects} subjects: per bundle, the mean along the bundle "
            "(node 0 is the same end in every subject: oriented by the model bundle) and one "
            "standard deviation either side. The values are in "
            "<code>voxfleet campaign results NAME --profiles</code>.",
            "No profiles job has committed yet.",
        )
    # A rerun into the same folder must not leave an old plot that contradicts this page.
    for name in set(PLOT_FILES) - written:
        (out_dir / name).unlink(missing_ok=True)
    return "\n".join(parts)


def _capped(total: int, limit: int) -> str:
    if total <= limit:
        return ""
    return f'<p class="note">First {limit} of {total} shown; {total - limit} omitted.</p>'


def build_report(
    campaign: str,
    rows: list[JobRow],
    out_dir: Path,
    *,
    cost_per_core_hour: float = 0.05,
    params: dict[str, Any] | None = None,
    max_table_rows: int = MAX_TABLE_ROWS,
    profiles: list[dict[str, Any]] | None = None,
) -> Path:
    """Write out_dir/index.html plus PNG plots; returns the index path. ``profiles``: the long
    table of the campaign's tract profiles (None: the campaign has no profiles step)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarize(rows, cost_per_core_hour)
    name = html.escape(campaign)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>Campaign <code>{name}</code></h1>", f'<p class="note">Generated {stamp}.</p>']
    if not rows:
        body.append('<p class="empty">This campaign has no jobs.</p>')
    body += [
        "<h2>Summary</h2>",
        _summary_table(s),
        f'<p class="note">{CORE_SECONDS_DEFINITION}</p>',
    ]
    if params:
        values = [
            [str(k), v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)]
            for k, v in params.items()
        ]
        body += ["<h2>Parameters</h2>", _table(values, ["parameter", "value"], table_id="params")]
    body += ["<h2>Plots</h2>", _plots_html(rows, s, out_dir, profiles)]

    failed = [r for r in rows if r.state == "failed"]
    body.append("<h2>Failures</h2>")
    if failed:
        cells = [[r.job_id, r.subject, r.reason or "(no reason recorded)"] for r in failed]
        body.append(
            _table(cells[:max_table_rows], ["job id", "subject", "reason"], table_id="failures")
        )
        body.append(_capped(len(failed), max_table_rows))
    else:
        body.append('<p class="note">No failures.</p>')

    body.append("<h2>Jobs</h2>")
    if rows:
        jobs = []
        for r in rows[:max_table_rows]:
            t = r.timing or {}
            consumer = t.get("consumer")
            wait = stages_of(t).get("queue_wait")
            jobs.append(
                [r.job_id, r.subject, r.state, str(consumer or ""), _cell(wall_of(t)), _cell(wait)]
            )
        header = ["job id", "subject", "state", "consumer", "wall s", "queue wait s"]
        body.append(_table(jobs, header, table_id="jobs", numeric=2))
        body.append(_capped(len(rows), max_table_rows))
    else:
        body.append('<p class="note">No jobs.</p>')

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>voxfleet campaign {name}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )
    index = out_dir / "index.html"
    partial = out_dir / "index.html.partial"
    partial.write_text(page, encoding="utf-8")
    partial.replace(index)  # a reader (or a browser refresh) never sees half a page
    return index
