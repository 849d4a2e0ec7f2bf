"""The bundles job's spec: its subject and key come from the tractography result it reads, and
a tractography job's follow-up is validated at enqueue but never changes the tractogram's key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.jobspec import JobSpec
from shared.params import BundlesParams, TractographyParams

RESULT = "s3://lab/derivatives/100307/tractography/0123456789abcdef"


def bundles(**overrides: object) -> JobSpec:
    fields: dict[str, object] = {
        "pipeline": "bundles",
        "input_uri": RESULT,
        "results_uri": "s3://lab/derivatives",
        "params": {"atlas": "s3://lab/atlas/hcp842"},
    }
    return JobSpec.model_validate({**fields, **overrides})


def test_subject_is_the_tractography_results_subject() -> None:
    spec = bundles()
    assert spec.subject == "100307"
    assert spec.result_prefix == f"100307/bundles/{spec.key[:16]}"
    # Naming the manifest itself is the same job.
    assert bundles(input_uri=f"{RESULT}/manifest.json").key == spec.key
    # Another tractogram (another tractography key) or another atlas: another job.
    assert bundles(input_uri=RESULT[:-1] + "0").key != spec.key
    assert bundles(params={"atlas": "s3://lab/atlas/other"}).key != spec.key
    # Anything else: the last component, as for every pipeline.
    assert bundles(input_uri="s3://lab/x/sub-01").subject == "sub-01"


def test_atlas_is_required_and_checked() -> None:
    with pytest.raises(ValidationError, match="atlas"):
        BundlesParams()  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=r"\.\."):
        BundlesParams(atlas="s3://lab/../etc")
    with pytest.raises(ValidationError, match="slr_min_length"):
        BundlesParams(atlas="/a", slr_min_length=300)


def tract(params: dict[str, object]) -> JobSpec:
    return JobSpec(
        pipeline="tractography", input_uri="s3://lab/hcp/100307", results_uri="/r", params=params
    )


def test_followup_is_validated_and_left_out_of_the_key() -> None:
    plain = tract({"shards": 4})
    chained = tract({"shards": 4, "bundles_atlas": "s3://lab/atlas", "bundles_params": {"qc": 0}})
    assert chained.key == plain.key
    params = chained.parameters()
    assert isinstance(params, TractographyParams)
    follow = params.followup_params()
    assert follow is not None and follow.atlas == "s3://lab/atlas" and follow.qc is False
    with pytest.raises(ValidationError, match="bundles follow-up: pruning_thr"):
        tract({"bundles_atlas": "/a", "bundles_params": {"pruning_thr": -1}})
    with pytest.raises(ValidationError, match="needs bundles_atlas"):
        tract({"bundles_params": {"qc": False}})
    with pytest.raises(ValidationError, match=r"bundles follow-up: .*nope"):
        tract({"bundles_atlas": "/a", "bundles_params": {"nope": 1}})
