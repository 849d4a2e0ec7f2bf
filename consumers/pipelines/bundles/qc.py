"""The bundles QC image: every recognised bundle drawn in three projections, one colour each.

Streamlines are in the subject's native space (RAS mm), so the picture shows what the outputs
hold; a bundle found nowhere is listed in the legend with its zero count, where it is easy to
spot. Uses ``matplotlib.figure.Figure`` directly, never pyplot (see ``qc``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

MAX_DRAWN = 300  # streamlines drawn per bundle: enough to show its shape, fast to render
PROJECTIONS = (("sagittal", 1, 2), ("coronal", 0, 2), ("axial", 0, 1))  # (name, x axis, y axis)
AXES = "RAS"


def bundles_image(path: Path, subject: str, bundles: dict[str, Any]) -> Path:
    """Write the PNG at ``path``: three panels (sagittal, coronal, axial projections)."""
    figure = Figure(figsize=(13.5, 5.0), dpi=90)
    panels = figure.subplots(1, 3)
    cmap = colormaps["tab10" if len(bundles) <= 10 else "tab20"]
    for i, (name, streamlines) in enumerate(sorted(bundles.items())):
        colour = cmap(i % cmap.N)
        step = max(1, len(streamlines) // MAX_DRAWN)
        drawn = [np.asarray(streamlines[k]) for k in range(0, len(streamlines), step)]
        for panel, (_, a, b) in zip(panels, PROJECTIONS, strict=True):
            # One collection per bundle and panel: a plot() call per streamline is ~100x slower.
            lines = [line[:, [a, b]] for line in drawn]
            panel.add_collection(LineCollection(lines, colors=[colour], linewidths=0.4, alpha=0.6))
        panels[0].plot([], [], color=colour, label=f"{name} ({len(streamlines)})")
    for panel, (title, a, b) in zip(panels, PROJECTIONS, strict=True):
        panel.set_title(title)
        panel.set_xlabel(f"{AXES[a]} (mm)")
        panel.set_ylabel(f"{AXES[b]} (mm)")
        panel.autoscale_view()
        panel.set_aspect("equal", adjustable="datalim")
    total = sum(len(s) for s in bundles.values())
    figure.suptitle(f"{subject}: {len(bundles)} bundles, {total} streamlines (native space)")
    panels[0].legend(loc="upper left", fontsize=7, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def profiles_image(path: Path, subject: str, profiles: dict[str, dict[str, Any]]) -> Path:
    """One panel per map (FA, MD), one line per bundle along its nodes (node 0 at the end the
    model bundle starts from)."""
    metrics = sorted({m for maps in profiles.values() for m in maps})
    figure = Figure(figsize=(6.0 * max(1, len(metrics)), 4.2), dpi=90)
    panels = np.atleast_1d(figure.subplots(1, max(1, len(metrics))))
    cmap = colormaps["tab10" if len(profiles) <= 10 else "tab20"]
    for i, (name, maps) in enumerate(sorted(profiles.items())):
        for panel, metric in zip(panels, metrics, strict=False):
            if metric in maps:
                panel.plot(maps[metric], color=cmap(i % cmap.N), linewidth=1.2, label=name)
    for panel, metric in zip(panels, metrics, strict=False):
        panel.set_title(metric.upper())
        panel.set_xlabel("node along the bundle")
    if metrics:
        panels[0].legend(loc="best", fontsize=7, frameon=False)
    figure.suptitle(f"{subject}: tract profiles of {len(profiles)} bundles")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
