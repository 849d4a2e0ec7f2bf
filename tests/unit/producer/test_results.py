"""The campaign table's file: one type per column, written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from producer.results import write_table
from shared.errors import InvalidInput

ROWS = [
    {"subject": "s1", "state": "done", "fibers": 3, "volume_fraction": 0.25, "session": "1"},
    {"subject": "s2", "state": "done", "fibers": 4, "volume_fraction": 1, "session": 2},
    {"subject": "s3", "state": "failed", "reason": "no bvec"},  # no figures: nulls
]


def test_parquet_columns_keep_one_type_and_nulls(tmp_path: Path) -> None:
    table = pq.read_table(write_table(ROWS, tmp_path / "t.parquet"))
    types = {f.name: str(f.type) for f in table.schema}
    assert types["fibers"] == "int64" and types["volume_fraction"] == "double"
    assert types["session"] == "string"  # "1" and 2: text, as a session label is
    rows = table.to_pylist()
    assert rows[2]["fibers"] is None and rows[2]["reason"] == "no bvec"
    assert [r["session"] for r in rows] == ["1", "2", None]


def test_csv_has_every_column_once(tmp_path: Path) -> None:
    lines = write_table(ROWS, tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "subject,state,fibers,volume_fraction,session,reason"
    assert lines[3] == "s3,failed,,,,no bvec"


def test_an_unknown_format_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"\.parquet or \.csv"):
        write_table(ROWS, tmp_path / "t.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_a_tractography_campaign_finds_its_bundles_followups() -> None:
    from consumers.followup import followups
    from producer.results import bundles_followups
    from shared.jobspec import JobSpec

    params = {"bundles_atlas": "s3://lab/atlas", "bundles_params": {"slr_min_cluster": 5}}
    spec = JobSpec(
        pipeline="tractography",
        input_uri="s3://lab/hcp/100307",
        results_uri="s3://lab/results",
        params=params,
    )
    result = f"s3://lab/results/{spec.subject}/tractography/{spec.key[:16]}/manifest.json"
    [enqueued] = followups(spec, result)  # what the consumer sends after the commit
    record = {"params": params, "results_uri": "s3://lab/results"}
    [found] = bundles_followups(record, [(spec.job_id, spec.subject, spec.key, "done", "")])
    assert found[:3] == (enqueued.job_id, enqueued.subject, enqueued.key)
