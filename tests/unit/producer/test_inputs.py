from __future__ import annotations

from pathlib import Path

import pytest

from producer.inputs import input_rows, marker_folders, read_manifest_rows
from shared.errors import InvalidInput
from shared.settings import Settings


def test_txt_manifest_skips_comments_and_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("# cohort\nsub/100307\n\n/abs/100408\ns3://b/hcp/1\n")
    rows = read_manifest_rows(str(tmp_path / "list.txt"), Settings())
    assert [(r.line, r.input_uri) for r in rows] == [
        (2, f"{tmp_path}/sub/100307"),
        (4, "/abs/100408"),
        (5, "s3://b/hcp/1"),
    ]


def test_csv_manifest_columns_become_subject_and_params(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("input,subject,b0_threshold\n/d/a,A,20\n/d/b,,\n/d/c\n")
    rows = read_manifest_rows(str(tmp_path / "m.csv"), Settings())
    assert rows[0].subject == "A" and rows[0].params == {"b0_threshold": "20"}
    assert rows[1].subject == "" and rows[1].params == {}
    assert rows[2].problem == "1 fields, header has 3" and rows[2].line == 4


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "empty"), ("path,x\n/a,1\n", "'input' column"), ("input,input\n/a,/b\n", "repeated")],
)
def test_bad_csv_headers(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InvalidInput, match=needle):
        read_manifest_rows(str(tmp_path / "m.csv"), Settings())


def test_marker_folders_are_the_folders_holding_the_marker(tmp_path: Path) -> None:
    for name in ("s1.zarr", "s2.zarr"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "zarr.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    rows = marker_folders(str(tmp_path), "zarr.json", Settings())
    assert [r.subject for r in rows] == ["s1.zarr", "s2.zarr"]
    assert input_rows(str(tmp_path), "microstructure", Settings()).found_by == "marker"
    with pytest.raises(InvalidInput, match="no inputs"):
        marker_folders(str(tmp_path / "notes"), "zarr.json", Settings())
    with pytest.raises(InvalidInput, match="no such folder"):
        input_rows(str(tmp_path / "missing"), "dti", Settings())


def test_hcp_subjects_are_found_by_their_layout(tmp_path: Path) -> None:
    for name in ("100307", "100408"):
        (tmp_path / name / "T1w/Diffusion").mkdir(parents=True)
        (tmp_path / name / "T1w/Diffusion/data.nii.gz").write_bytes(b"x")
    (tmp_path / "notes").mkdir()
    inputs = input_rows(str(tmp_path), "dti", Settings())
    assert inputs.found_by == "hcp" and not inputs.from_manifest
    assert [(r.subject, r.input_uri) for r in inputs.rows] == [
        ("100307", f"{tmp_path}/100307"),
        ("100408", f"{tmp_path}/100408"),
    ]
    with pytest.raises(InvalidInput, match=r"name one with --layout \(qsiprep\|bids\|hcp\)"):
        input_rows(str(tmp_path / "notes"), "dti", Settings())


@pytest.mark.parametrize(
    ("pipeline", "options", "needle"),
    [
        ("dti", {"marker": "x"}, r"--marker is not for dti: .* \(--layout qsiprep\|bids\|hcp\)"),
        ("microstructure", {"layout": "bids"}, "--layout is not for microstructure"),
        ("tractography", {"layout": "nope"}, r"unknown layout 'nope' \(have: qsiprep, bids, hcp\)"),
    ],
)
def test_listing_options_that_do_not_fit(
    tmp_path: Path, pipeline: str, options: dict[str, str], needle: str
) -> None:
    with pytest.raises(InvalidInput, match=needle):
        input_rows(str(tmp_path), pipeline, Settings(), **options)


def test_a_manifest_takes_no_listing_options(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("/d/100307\n")
    assert input_rows(str(tmp_path / "list.txt"), "dti", Settings()).from_manifest
    with pytest.raises(InvalidInput, match="not a manifest"):
        input_rows(str(tmp_path / "list.txt"), "dti", Settings(), layout="hcp")
