from __future__ import annotations

import json

import pytest

from shared.errors import InvalidInput
from shared.jobspec import JobSpec


def spec(**overrides: object) -> JobSpec:
    fields: dict[str, object] = {
        "pipeline": "dti",
        "input_uri": "s3://bucket/hcp/100307",
        "results_uri": "s3://bucket/out",
    }
    fields.update(overrides)
    return JobSpec.model_validate(fields)


def test_defaults_are_filled_and_subject_derived() -> None:
    job = spec()
    assert job.subject == "100307"
    assert job.params == {"fit_method": "WLS", "b0_threshold": 50.0, "chunks": None, "qc": True}
    assert job.result_prefix == f"100307/dti/{job.key[:16]}"


def test_json_roundtrip_is_lossless() -> None:
    job = spec(params={"fit_method": "OLS"}, campaign="c1", cluster="local:2")
    again = JobSpec.from_message(json.loads(json.dumps(job.to_message())))
    assert again == job and again.key == job.key


def test_key_ignores_id_campaign_cluster_results_but_not_params_or_input() -> None:
    base = spec()
    assert spec(campaign="x", cluster="local:3", results_uri="/elsewhere").key == base.key
    assert spec().job_id != base.job_id
    assert spec(params={"fit_method": "OLS"}).key != base.key
    assert spec(input_uri="s3://bucket/hcp/100408").key != base.key
    # Explicit defaults and omitted defaults are the same work.
    assert spec(params={"fit_method": "WLS", "qc": True}).key == base.key
    # String values from the CLI are typed before hashing.
    assert spec(params={"b0_threshold": "50"}).key == base.key


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"pipeline": "nope"}, "pipeline"),
        ({"params": {"bogus": 1}}, "bogus"),
        ({"params": {"fit_method": "MAGIC"}}, "fit_method"),
        ({"params": {"b0_threshold": -1}}, "b0_threshold"),
        ({"input_uri": "s3://bucket/hcp/../etc"}, ".."),
        ({"input_uri": "s3://bucket/hcp/..", "subject": ""}, ".."),
        ({"subject": "../100307"}, "subject"),
        ({"subject": "a/b"}, "subject"),
        ({"input_uri": "http://example.com/x"}, "URI"),
        ({"cluster": "yarn://x"}, "cluster"),
        ({"schema_version": 2}, "schema_version"),
        ({"extra_field": 1}, "extra_field"),
    ],
)
def test_bad_specs_fail_with_one_line(overrides: dict[str, object], needle: str) -> None:
    message = {"pipeline": "dti", "input_uri": "s3://b/hcp/1", "results_uri": "s3://b/o"}
    message.update(overrides)
    with pytest.raises(InvalidInput) as info:
        JobSpec.from_message(message)
    text = str(info.value)
    assert needle in text and "\n" not in text


@pytest.mark.parametrize("payload", [None, 42, "text", [1, 2], {"args": [1]}])
def test_non_object_payloads_are_invalid(payload: object) -> None:
    with pytest.raises(InvalidInput):
        JobSpec.from_message(payload)
