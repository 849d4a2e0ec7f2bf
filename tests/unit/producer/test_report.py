from __future__ import annotations

import random
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from producer.report import STATES, JobRow, build_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_795_300_000.0
CONSUMERS = {"voxfleet-101@node-a": 2, "voxfleet-202@node-b": 4, "voxfleet-303@node-c": 8}
SCRIPT_REASON = "InvalidInput: bvals <script>alert(1)</script> unreadable"
DOLLAR_REASON = "MissingInput: s3://lab/$USER/100007/T1w/Diffusion/data.nii.gz does not exist"


def synthetic_rows(seed: int = 0) -> list[JobRow]:
    """40 dti jobs enqueued at once: 35 committed over 3 consumers, 3 failed, 2 still queued."""
    rnd = random.Random(seed)
    free_at = dict.fromkeys(CONSUMERS, T0 + 2.0)
    rows: list[JobRow] = []
    for i in range(35):
        consumer = min(free_at, key=lambda c: free_at[c])
        threads = CONSUMERS[consumer]
        stages = {
            "queue_wait": free_at[consumer] - T0,
            "load": rnd.uniform(4, 15),
            "cluster_acquire": rnd.uniform(3, 9),
            "cluster_wait": rnd.uniform(0, 1),
            "dti": rnd.uniform(60, 240) * 4 / threads,
            "write": rnd.uniform(0.005, 0.05),
            "qc": rnd.uniform(0.1, 0.4),
            "cluster_release": rnd.uniform(0.8, 2.5),
            "publish": rnd.uniform(0.01, 0.3),
        }
        # cluster_acquire runs alongside load, so it is not part of the wall time.
        wall = sum(v for k, v in stages.items() if k not in ("queue_wait", "cluster_acquire"))
        start = free_at[consumer]
        timing = {
            "attempt": f"{i:012x}",
            "cluster": {
                "acquire_s": stages["cluster_acquire"],
                "backend": "local",
                "release_s": stages["cluster_release"],
                "threads": threads,
                "workers": threads,
            },
            "cluster_spec": f"local:{threads}",
            "consumer": consumer,
            "started_at": start,
            "finished_at": start + wall,
            "wall_s": wall,
            "job_id": f"job{i:04d}",
            "pipeline": "dti",
            "stages_s": stages,
            "subject": str(100000 + i),
        }
        free_at[consumer] = start + wall + rnd.uniform(0.05, 0.5)
        rows.append(JobRow(f"job{i:04d}", str(100000 + i), "done", timing=timing))
    for i, reason in enumerate([SCRIPT_REASON, DOLLAR_REASON, DOLLAR_REASON], start=35):
        rows.append(JobRow(f"job{i:04d}", str(100000 + i), "failed", reason))
    rows += [JobRow(f"job{i:04d}", str(100000 + i), "queued") for i in (38, 39)]
    return rows


class PageParser(HTMLParser):
    """Collects tags, image sources and the cell texts of every table that has an id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attr = dict(attrs)
        if tag == "img":
            self.images.append(attr["src"] or "")
        elif tag == "table" and attr.get("id"):
            self._table = attr["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(index: Path) -> PageParser:
    parser = PageParser()
    parser.feed(index.read_text(encoding="utf-8"))
    parser.close()
    return parser


def summary(page: PageParser) -> dict[str, str]:
    return {label: value for label, value in page.tables["summary"]}


def leading_number(text: str) -> float:
    match = re.match(r"[\d,]+(\.\d+)?", text)
    assert match, text
    return float(match.group(0).replace(",", ""))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[JobRow], Path]:
    rows = synthetic_rows()
    out = tmp_path_factory.mktemp("report")
    index = build_report("hcp-<reprocess>", rows, out, params={"fit_method": "WLS", "chunks": 8})
    return rows, index


def test_page_parses_and_every_image_is_a_readable_png(report: tuple[list[JobRow], Path]) -> None:
    _, index = report
    page = parse(index)
    assert {"html", "table", "img", "figure"} <= set(page.tags)
    assert sorted(page.images) == sorted(
        ["stages.png", "timeline.png", "failures.png", "queue_wait.png", "cost.png"]
    )
    for src in page.images:
        png = index.parent / src
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        height, width = imread(png).shape[:2]
        assert height > 100 and width > 100, (src, height, width)
    assert page.tables["params"] == [["parameter", "value"], ["fit_method", "WLS"], ["chunks", "8"]]


def test_summary_counts_equal_rows_by_state(report: tuple[list[JobRow], Path]) -> None:
    rows, index = report
    table = summary(parse(index))
    assert table["jobs total"] == str(len(rows))
    for state in STATES:
        assert table[state] == str(sum(r.state == state for r in rows)), state
    assert (table["done"], table["failed"], table["queued"]) == ("35", "3", "2")
    assert table["committed (with timing.json)"] == "35"
    assert float(table["throughput (committed jobs per hour)"]) > 0


def test_core_hours_are_wall_time_times_cluster_threads(report: tuple[list[JobRow], Path]) -> None:
    rows, index = report
    expected = (
        sum(r.timing["wall_s"] * r.timing["cluster"]["threads"] for r in rows if r.timing) / 3600
    )
    table = summary(parse(index))
    core_hours = leading_number(table["total core-hours"])
    assert core_hours == pytest.approx(expected, abs=0.006)
    assert leading_number(table["estimated cost"]) == pytest.approx(expected * 0.05, abs=0.006)
    assert "at 0.05 per core-hour" in table["estimated cost"]


def test_user_text_is_escaped(report: tuple[list[JobRow], Path]) -> None:
    _, index = report
    raw = index.read_text(encoding="utf-8")
    assert "<script>" not in raw and "<reprocess>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    page = parse(index)
    failures = page.tables["failures"][1:]
    assert [row[2] for row in failures] == [SCRIPT_REASON, DOLLAR_REASON, DOLLAR_REASON]
    assert "hcp-<reprocess>" in "".join(page.text)


def test_empty_campaign_gives_a_valid_page(tmp_path: Path) -> None:
    index = build_report("empty", [], tmp_path)
    page = parse(index)
    assert page.images == []
    assert "This campaign has no jobs." in "".join(page.text)
    assert summary(page)["jobs total"] == "0"
    assert list(tmp_path.glob("*.png")) == []


def test_rerun_removes_plots_the_new_page_does_not_show(tmp_path: Path) -> None:
    rows = [JobRow("a", "1", "failed", "boom")]
    build_report("c", rows, tmp_path)
    assert (tmp_path / "failures.png").exists()
    build_report("c", [JobRow("a", "1", "queued")], tmp_path)
    assert not (tmp_path / "failures.png").exists()
    assert parse(tmp_path / "index.html").images == []


def test_timing_without_optional_fields(tmp_path: Path) -> None:
    bare: dict[str, Any] = {"started_at": T0, "wall_s": 12.5, "stages_s": {"load": 2.0}}
    odd: dict[str, Any] = {"wall_s": "soon", "stages_s": None, "cluster": {"threads": None}}
    rows = [JobRow("a", "1", "done", timing=bare), JobRow("b", "2", "done", timing=odd)]
    index = build_report("sparse", rows, tmp_path)
    page = parse(index)
    assert set(page.images) == {"stages.png", "timeline.png"}
    table = summary(page)
    assert table["committed (with timing.json)"] == "2"
    assert table["total core-hours"].startswith("0.0000")
    assert "2 committed jobs without a thread count" in table["total core-hours"]
    jobs = {row[0]: row for row in page.tables["jobs"][1:]}
    assert jobs["a"][3:] == ["", "12.50", ""] and jobs["b"][3:] == ["", "", ""]


def test_long_job_table_is_capped(tmp_path: Path) -> None:
    rows = [JobRow(f"j{i}", str(i), "queued") for i in range(30)]
    page = parse(build_report("big", rows, tmp_path, max_table_rows=10))
    assert len(page.tables["jobs"]) == 1 + 10
    assert "First 10 of 30 shown; 20 omitted." in "".join(page.text)


def _profile_rows() -> list[dict[str, Any]]:
    rows = []
    for s, subject in enumerate(["s1", "s2", "s3"]):
        for node in range(100):
            rows.append(
                {
                    "subject": subject,
                    "bundle": "CC",
                    "node": node,
                    "metric": "fa",
                    "value": 0.5 + 0.01 * s + 0.001 * node,
                }
            )
            if subject != "s3":  # a bundle one subject lacks
                rows.append(
                    {
                        "subject": subject,
                        "bundle": "CST_L",
                        "node": node,
                        "metric": "md",
                        "value": 7e-4,
                    }
                )
    return rows


def test_profiles_are_summarised_across_subjects() -> None:
    import numpy as np

    from producer.report_plots import profile_spread

    spread = profile_spread(_profile_rows())
    mean, sd, n = spread[("CC", "fa")]
    assert n == 3 and mean.shape == (100,)
    assert mean[0] == pytest.approx(0.51) and mean[99] == pytest.approx(0.51 + 0.099)
    assert sd[0] == pytest.approx(float(np.std([0.5, 0.51, 0.52], ddof=1)))
    assert spread[("CST_L", "md")][2] == 2 and not spread[("CST_L", "md")][1].any()


def test_profile_plot_only_for_a_campaign_with_profiles(tmp_path: Path) -> None:
    rows = [JobRow("j1", "s1", "done", "", None)]
    html = build_report("tm", rows, tmp_path, profiles=_profile_rows()).read_text()
    assert 'src="profiles.png"' in html and "3 subjects" in html
    assert imread(tmp_path / "profiles.png").ndim == 3
    html = build_report("tm", rows, tmp_path, profiles=[]).read_text()
    assert "No profiles job has committed yet." in html
    assert not (tmp_path / "profiles.png").exists()
    html = build_report("plain", rows, tmp_path).read_text()
    assert "profiles" not in html
