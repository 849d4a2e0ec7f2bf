"""``docs/benchmarks.md`` is what ``bench.report`` renders from the committed results."""

from __future__ import annotations

import json

import pytest

from bench.harness import RESULTS
from bench.report import _FIELD, OUT, fill, get, met, render, shown
from bench.report_text import ROWS, TEXT


def test_the_committed_reference_is_the_rendered_one() -> None:
    assert OUT.read_text() == render(), "docs/benchmarks.md is stale: run python -m bench.report"


def test_every_results_file_is_read_by_a_table() -> None:
    assert sorted(p.stem for p in RESULTS.glob("*.json")) == sorted(TEXT)
    assert set(ROWS) == set(TEXT)


@pytest.mark.parametrize("name", sorted(TEXT))
def test_every_figure_a_table_names_is_in_its_results_file(name: str) -> None:
    """A misspelt path would render as "-" forever; only peak memory may be missing (runs
    before it was measured)."""
    figures = json.loads((RESULTS / f"{name}.json").read_text())
    for row in ROWS[name]:
        for path, _ in _FIELD.findall(row[1]):
            assert get(figures, path) is not None or path.endswith("peak_pss_mib"), path


def test_targets_are_checked_against_the_figures() -> None:
    figures = {"a": 1.05, "b": {"c": 0}}
    assert met("a <= 1.10", figures) is True
    assert met("a >= 1.10", figures) is False
    assert met("a <= 1.10 and b.c == 0", figures) is True
    assert met("a <= 1.10 and b.c == 1", figures) is False
    assert met("missing <= 1", figures) is None
    assert shown("a <= 1.10 and b.c == 0") == "<= 1.10; == 0"
    assert fill("{a:1} / {b.c} / {x:gib}", figures) == "1.1 / 0 / -"
    assert fill("{m:gib}", {"m": 2048.0}) == "2.00 GiB"
    with pytest.raises(ValueError, match="expected"):
        met("a is small", figures)


def test_every_benchmark_has_a_documented_command_that_bench_runs() -> None:
    from bench.__main__ import available, documented_options

    assert sorted(TEXT) == available()
    for name in available():
        documented_options(name)  # raises if the command names another module
