"""The PNG plots of a campaign report; ``producer.report`` gathers the data and writes the HTML.

Every plot builds its own ``Figure`` with an Agg canvas: pyplot keeps global state (unsafe when
a CLI or a test builds reports concurrently) and may try to reach a display. Each function takes
plain numbers and strings, writes one PNG and returns whether it wrote anything, so that the
page never points at an image that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

STATE_COLOURS = {
    "done": "#4c9a5b",
    "failed": "#c8453b",
    "retrying": "#e0a030",
    "running": "#4a7fc1",
    "queued": "#9a9a9a",
    "cancelled": "#6b5b95",
}
OTHER_COLOUR = "#333333"
LOG_RANGE = 50.0  # max/min beyond which a linear axis squashes the short stages into one pixel
LOG_FLOOR_S = 1e-3  # zero-length stages still need a place on a log axis
MAX_FAILURE_BARS = 12  # more reasons than this become one "other" bar; the table lists them all
LABEL_CHARS = 60
LABELLED_BARS = 5  # the longest jobs get their subject written on the timeline


@dataclass(frozen=True)
class Bar:
    """One job on the timeline, in seconds since the campaign's first start."""

    consumer: str
    start: float
    end: float
    state: str
    label: str


def time_unit(span_s: float) -> tuple[str, float]:
    """Seconds for short spans, minutes or hours for long ones, so tick labels stay short."""
    if span_s < 600:
        return "s", 1.0
    if span_s < 10 * 3600:
        return "min", 60.0
    return "h", 3600.0


def plain(text: str, limit: int = LABEL_CHARS) -> str:
    """A label matplotlib draws literally: one line, bounded, no mathtext from a stray ``$``."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return flat.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> bool:
    fig.savefig(path, format="png")
    return True


def plot_stages(stages: dict[str, list[float]], path: Path) -> bool:
    """Box plot per stage (rows in first-seen order, so they read like the pipeline)."""
    names = [name for name, values in stages.items() if values]
    if not names:
        return False
    data = [np.asarray(stages[name], dtype=float) for name in names]
    positive = np.concatenate([d[d > 0] for d in data])
    wide = positive.size > 0 and positive.max() / max(positive.min(), LOG_FLOOR_S) > LOG_RANGE
    if wide:
        data = [np.maximum(d, LOG_FLOOR_S) for d in data]
    fig = _figure(9, 1.5 + 0.42 * len(names))
    ax = fig.add_subplot()
    ax.boxplot(
        data, orientation="horizontal", widths=0.6, flierprops={"markersize": 3, "alpha": 0.5}
    )
    ax.set_yticks(range(1, len(names) + 1), [plain(n) for n in names])
    ax.invert_yaxis()
    if wide:
        ax.set_xscale("log")
    ax.set_xlabel("seconds" + (" (log scale)" if wide else ""))
    ax.set_title("Time per stage across jobs")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_timeline(bars: Sequence[Bar], path: Path) -> bool:
    """Gantt chart: one row per consumer, one bar per job, coloured by state."""
    if not bars:
        return False
    consumers = sorted({b.consumer for b in bars})
    row = {name: i for i, name in enumerate(consumers)}
    unit, scale = time_unit(max(b.end for b in bars))
    # Thousands of consumers would make a figure no one can open; rows just get thinner.
    fig = _figure(11, min(2.0 + 0.35 * len(consumers), 14.0))
    ax = fig.add_subplot()
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for b in bars:
        span = (b.start / scale, max(b.end - b.start, 0.0) / scale)
        groups.setdefault((b.consumer, b.state), []).append(span)
    for (consumer, state), spans in groups.items():
        # White edges keep back-to-back jobs on one consumer visibly separate.
        ax.broken_barh(
            spans,
            (row[consumer] - 0.4, 0.8),
            facecolors=STATE_COLOURS.get(state, OTHER_COLOUR),
            edgecolor="white",
            linewidth=0.5,
        )
    for bar in sorted(bars, key=lambda b: b.end - b.start, reverse=True)[:LABELLED_BARS]:
        ax.text(
            (bar.start + bar.end) / 2 / scale,
            row[bar.consumer],
            plain(bar.label, 20),
            ha="center",
            va="center",
            fontsize=7,
            color="white",
            clip_on=True,
        )
    ax.set_yticks(range(len(consumers)), [plain(c, 40) for c in consumers])
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel(f"time since the campaign's first start ({unit})")
    ax.set_title("Jobs per consumer over time")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        Patch(color=STATE_COLOURS.get(s, OTHER_COLOUR), label=s)
        for s in sorted({b.state for b in bars})
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_failures(counts: Sequence[tuple[str, int]], path: Path) -> bool:
    """Horizontal bars of failure counts by reason, most frequent on top."""
    if not counts:
        return False
    ranked = sorted(counts, key=lambda rc: (-rc[1], rc[0]))
    shown = ranked[:MAX_FAILURE_BARS]
    rest = ranked[MAX_FAILURE_BARS:]
    labels = [plain(reason or "(no reason recorded)") for reason, _ in shown]
    values = [n for _, n in shown]
    if rest:
        labels.append(f"({len(rest)} other reasons)")
        values.append(sum(n for _, n in rest))
    fig = _figure(10, 1.5 + 0.4 * len(labels))
    ax = fig.add_subplot()
    positions = np.arange(len(labels))
    ax.barh(positions, values, color=STATE_COLOURS["failed"])
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    for y, n in zip(positions, values, strict=True):
        ax.text(n, float(y), f" {n}", va="center", fontsize=8)
    ax.set_xlabel("failed jobs")
    ax.set_title("Failures by reason")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.1)
    return _save(fig, path)


def plot_queue_wait(waits_s: Sequence[float], path: Path) -> bool:
    """Histogram of how long jobs sat in the queue before a consumer started them."""
    if not waits_s:
        return False
    values = np.asarray(waits_s, dtype=float)
    unit, scale = time_unit(float(values.max()))
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    ax.hist(values / scale, bins=min(40, max(5, values.size // 3)), color="#4a7fc1")
    ax.set_xlabel(f"queue wait ({unit})")
    ax.set_ylabel("jobs")
    ax.set_title("Queue wait: submission to consumer start")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_cost(points: Sequence[tuple[float, float]], path: Path) -> bool:
    """Cumulative core-hours against finish time ((seconds since first start, core-hours))."""
    if not points:
        return False
    ordered = sorted(points)
    unit, scale = time_unit(ordered[-1][0])
    x = np.asarray([0.0] + [t / scale for t, _ in ordered])
    y = np.cumsum([0.0] + [ch for _, ch in ordered])
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    ax.step(x, y, where="post", color="#6b5b95")
    ax.set_xlabel(f"time since the campaign's first start ({unit})")
    ax.set_ylabel("core-hours (cumulative)")
    ax.set_title("Core-hours used by committed jobs")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return _save(fig, path)


def profile_spread(
    rows: Sequence[dict[str, object]],
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]]:
    """(bundle, metric) -> (mean per node, SD per node, subjects) across subjects, from the long
    table of tract profiles (subject, bundle, node, metric, value)."""
    found: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for row in rows:
        key = (str(row["bundle"]), str(row["metric"]))
        found.setdefault(key, {}).setdefault(str(row["subject"]), {})[int(str(row["node"]))] = (
            float(str(row["value"]))
        )
    out = {}
    for key, subjects in found.items():
        nodes = max(max(p) for p in subjects.values()) + 1
        grid = np.full((len(subjects), nodes), np.nan)
        for i, profile in enumerate(subjects.values()):
            grid[i, list(profile)] = list(profile.values())
        sd = np.nanstd(grid, axis=0, ddof=1) if len(subjects) > 1 else np.zeros(nodes)
        out[key] = (np.nanmean(grid, axis=0), sd, len(subjects))
    return out


def plot_profiles(rows: Sequence[dict[str, object]], path: Path) -> bool:
    """Tract profiles across subjects: a panel per metric, per bundle the mean along the bundle
    and a band of one standard deviation either side."""
    spread = profile_spread(rows)
    if not spread:
        return False
    metrics = sorted({metric for _, metric in spread})
    bundles = sorted({bundle for bundle, _ in spread})
    colours = [f"C{i % 10}" for i in range(len(bundles))]
    fig = _figure(4.5 * len(metrics) + 2, 4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for bundle, colour in zip(bundles, colours, strict=True):
            if (bundle, metric) not in spread:
                continue
            mean, sd, n = spread[(bundle, metric)]
            x = np.arange(mean.size)
            ax.plot(x, mean, color=colour, label=f"{plain(bundle, 24)} (n={n})")
            ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.25, linewidth=0)
        ax.set_xlabel("node along the bundle")
        ax.set_ylabel(plain(metric.upper(), 12))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    subjects = len({str(row["subject"]) for row in rows})
    fig.suptitle(f"Tract profiles across {subjects} subjects: mean and one SD")
    return _save(fig, path)
