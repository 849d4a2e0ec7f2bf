"""``python -m bench [NAME ...] [--option ...]``: run benchmarks. With no names, every one, each
with the options of the command ``docs/benchmarks.md`` gives for it (``bench.report_text``);
named ones get the options given here (or their own defaults)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"harness", "memory", "report", "report_text", "single_process"}  # not benchmarks


def available() -> list[str]:
    modules = pkgutil.iter_modules([str(HERE)])
    return sorted(m.name for m in modules if m.name not in SKIP and not m.name.startswith("_"))


def documented_options(name: str) -> list[str]:
    """The options of ``name``'s command in the benchmarks reference."""
    from bench.report_text import TEXT

    words = TEXT[name]["command"].split()
    if words[:4] != ["python", "-m", "bench", name]:
        raise ValueError(f"{name}: its documented command is not `python -m bench {name} ...`")
    return words[4:]


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")]
    options = [a for a in argv if a.startswith("-")]
    unknown = set(names) - set(available())
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: {', '.join(available())}")
        return 2
    if not names:
        runs = [(name, documented_options(name) + options) for name in available()]
    else:
        runs = [(name, options) for name in names]
    from bench import harness

    for name, opts in runs:
        harness.COMMAND = " ".join(["python -m bench", name, *opts])
        importlib.import_module(f"bench.{name}").main(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
