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


def test_a_tractography_campaign_finds_every_step_of_its_chains() -> None:
    """The rows' bundles and profiles jobs are the very jobs the consumers enqueue after each
    commit: the same ids, subjects and keys, found without Redis."""
    from consumers.followup import followups
    from producer.results import JobRef, with_followups
    from shared.jobspec import JobSpec

    params = {"bundles_atlas": "s3://lab/atlas", "bundles_params": {"slr_min_cluster": 5}}
    spec = JobSpec(
        pipeline="tractography",
        input_uri="s3://lab/hcp/100307",
        results_uri="s3://lab/results",
        params=params,
    )
    result = f"s3://lab/results/{spec.subject}/tractography/{spec.key[:16]}/manifest.json"
    [bundles] = followups(spec, result)  # what the consumer sends after the commit
    after = f"s3://lab/results/{bundles.result_prefix}/manifest.json"
    [profiles] = followups(bundles, after)  # and after the bundles job's
    record = {"params": params, "results_uri": "s3://lab/results"}
    first = JobRef(spec.job_id, "tractography", spec.subject, spec.key, "done")
    found = with_followups(record, [first])
    assert found[0] == first
    assert [(j.job_id, j.pipeline, j.subject, j.key) for j in found[1:]] == [
        (s.job_id, s.pipeline, s.subject, s.key) for s in (bundles, profiles)
    ]
    assert [j.state for j in found[1:]] == ["not committed", "not committed"]
    running = with_followups(record, [first._replace(state="running")])
    assert [j.state for j in running[1:]] == ["pending", "pending"]
    # Without an atlas a tractography job is a chain of one.
    assert with_followups({"params": {}, "results_uri": "s3://lab/results"}, [first]) == [first]
