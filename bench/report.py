"""Render ``docs/benchmarks.md`` from ``bench/results/*.json``: ``python -m bench.report
[--out PATH]`` (``make bench`` runs it after the benchmarks).

No figure here is typed by hand: every value is read from the results file the benchmark
wrote. What each benchmark does and where its figures stop meaning anything is the prose in
``bench/report_text.py``; superseded runs and the investigations behind the figures are in
``docs/benchmarks-history.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.harness import RESULTS
from bench.report_text import INTRO, ROWS, TEXT

OUT = RESULTS.parents[1] / "docs" / "benchmarks.md"
Figures = dict[str, Any]


def get(figures: Figures, path: str) -> Any:
    """``figures["a"]["b"]`` for ``"a.b"``; None where any part is missing."""
    value: Any = figures
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def fmt(value: Any, spec: str = "") -> str:
    """One figure as the tables show it: ``spec`` is a digit count or ``gib`` (MiB in)."""
    if value is None:
        return "-"
    if spec == "gib":
        return f"{float(value) / 1024:.2f} GiB"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if spec == "e":
            return f"{value:.1e}"
        return f"{value:,.{int(spec or 3)}f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


_FIELD = re.compile(r"\{([a-z0-9_.]+)(?::([a-z0-9]+))?\}")
_CHECK = re.compile(r"^([a-z0-9_.]+) (<=|>=|==) (\S+)$")


def fill(template: str, figures: Figures) -> str:
    """``template`` with every ``{path}`` or ``{path:spec}`` replaced by that figure."""
    return _FIELD.sub(lambda m: fmt(get(figures, m.group(1)), m.group(2) or ""), template)


def met(target: str, figures: Figures) -> bool | None:
    """Whether every ``path op number`` clause of ``target`` (joined by `` and ``) holds;
    None if a figure is missing."""
    verdicts = []
    for clause in target.split(" and "):
        match = _CHECK.match(clause)
        if match is None:
            raise ValueError(f"target {target!r}: expected 'path <=|>=|== number'")
        path, op, limit = match.groups()
        value = get(figures, path)
        if value is None:
            return None
        bound = float(limit.replace(",", ""))
        verdicts.append({"<=": value <= bound, ">=": value >= bound, "==": value == bound}[op])
    return all(verdicts)


def shown(target: str) -> str:
    """A target as the table shows it: the limits, without the figures' paths."""
    return "; ".join(_CHECK.sub(r"\2 \3", clause) for clause in target.split(" and "))


def table(figures: Figures, rows: list[tuple[str, ...]]) -> str:
    lines = ["| figure | value | target |", "|---|---|---|"]
    for label, template, *target in rows:
        goal = "-"
        if target:
            verdict = met(target[0], figures)
            goal = shown(target[0]) + {None: "", True: ", **met**", False: ", **not met**"}[verdict]
        lines.append(f"| {label} | {fill(template, figures)} | {goal} |")
    return "\n".join(lines)


def section(name: str, figures: Figures | None) -> str:
    text = TEXT[name]
    parts = [f"## {name}", f"`{text['command']}` (`bench/{name}.py`)", text["method"].strip()]
    if figures is None:
        parts.append(f"No `bench/results/{name}.json` yet: run the command above.")
    else:
        run = figures.get("machine", {})
        parts.append(
            f"**Current figures** ({run.get('date', '?')}, commit `{run.get('commit', '?')}`, "
            f"{run.get('cpus', '?')} CPUs, Python {run.get('python', '?')}; "
            f"`bench/results/{name}.json`"
            + (f", written by `{run['command']}`" if run.get("command") else "")
            + "):"
        )
        parts.append(table(figures, ROWS[name]))
        if figures.get("note"):
            parts.append(f"The run's own note: {figures['note']}")
    parts.append("**Known limits.** " + text["limits"].strip())
    return "\n\n".join(parts)


def render(results: Path = RESULTS) -> str:
    sections = []
    for name in TEXT:
        path = results / f"{name}.json"
        sections.append(section(name, json.loads(path.read_text()) if path.exists() else None))
    return INTRO.strip() + "\n\n" + "\n\n".join(sections) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
