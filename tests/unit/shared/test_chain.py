"""Recipes as chains of jobs: each step's spec is known before anything runs."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from shared import chain
from shared.jobspec import JobSpec


def tract(**params: object) -> JobSpec:
    return JobSpec(
        job_id="j1",
        pipeline="tractography",
        input_uri="s3://lab/hcp/100307",
        results_uri="s3://lab/out",
        params=params,
    )


def test_tractometry_is_three_jobs_each_over_the_last_ones_result() -> None:
    spec = tract(bundles_atlas="s3://lab/atlas")
    steps = chain.steps(spec)
    assert [s.pipeline for s in steps] == ["tractography", "bundles", "profiles"]
    assert [s.job_id for s in steps] == ["j1", "j1-bundles", "j1-bundles-profiles"]
    for before, after in itertools.pairwise(steps):
        assert after.input_uri == f"s3://lab/out/{before.result_prefix}"
        assert after.subject == "100307"
    # Known from the index alone (pipeline, params, subject, key), without the first spec.
    again = chain.following(
        "tractography", {"bundles_atlas": "s3://lab/atlas"}, "s3://lab/out", "100307",
        spec.key, "j1",
    )  # fmt: skip
    assert [(s.job_id, s.key) for s in again] == [(s.job_id, s.key) for s in steps[1:]]


def test_no_followup_is_a_chain_of_one() -> None:
    spec = tract()
    assert chain.steps(spec) == [spec]
    assert chain.next_step(spec) is None


def test_a_long_id_is_cut_to_fit() -> None:
    assert len(chain.followup_id("x" * 64, "profiles")) == 64


@pytest.mark.parametrize(
    "params, message",
    [
        ({"bundles_params": {"profiles_params": {"metrics": ["t1"]}}}, "profiles follow-up"),
        ({"bundles_params": {"profiles": False, "profiles_params": {}}}, "needs profiles=true"),
        ({"bundles_params": {"profiles_params": {"profile_points": 3}}}, "profile_points"),
    ],
)
def test_a_bad_later_step_fails_at_enqueue(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tract(bundles_atlas="s3://lab/atlas", **params)
