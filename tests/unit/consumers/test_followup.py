"""Which job a finished tractography job enqueues, and only when asked."""

from __future__ import annotations

from consumers.followup import followups
from shared.jobspec import JobSpec

MANIFEST_URI = "s3://lab/derivatives/100307/tractography/0123456789abcdef/manifest.json"


def tract(**params: object) -> JobSpec:
    return JobSpec(
        job_id="a" * 64,
        campaign="hcp-v1",
        pipeline="tractography",
        input_uri="s3://lab/hcp/100307",
        results_uri="s3://lab/derivatives",
        params=params,
        cluster="local:4",
    )


def test_no_atlas_no_followup() -> None:
    assert followups(tract(), MANIFEST_URI) == []


def test_followup_is_a_bundles_job_over_the_committed_result() -> None:
    spec = tract(bundles_atlas="s3://lab/atlas", bundles_params={"pruning_thr": 6})
    (follow,) = followups(spec, MANIFEST_URI)
    assert follow.pipeline == "bundles" and follow.subject == "100307"
    assert follow.input_uri == MANIFEST_URI.removesuffix("/manifest.json")
    assert follow.params["atlas"] == "s3://lab/atlas" and follow.params["pruning_thr"] == 6
    assert follow.job_id.endswith("-bundles") and len(follow.job_id) == 64
    assert (follow.campaign, follow.cluster) == ("hcp-v1", "local:4")
    # The same finished job always names the same follow-up (enqueue is idempotent by id).
    assert followups(spec, MANIFEST_URI)[0].job_id == follow.job_id
    assert follow.key == followups(spec, MANIFEST_URI)[0].key


def test_bundles_are_followed_by_profiles_with_their_params() -> None:
    params = {"profiles_params": {"metrics": ["md"], "profile_points": 40}}
    spec = tract(bundles_atlas="s3://lab/atlas", bundles_params=params)
    (bundles,) = followups(spec, MANIFEST_URI)
    bundles_uri = f"s3://lab/derivatives/{bundles.result_prefix}"
    (profiles,) = followups(bundles, f"{bundles_uri}/manifest.json")
    assert profiles.pipeline == "profiles" and profiles.input_uri == bundles_uri
    assert profiles.subject == "100307" and profiles.campaign == "hcp-v1"
    assert profiles.params == {"metrics": ["md"], "profile_points": 40, "qc": True}
    assert profiles.job_id.endswith("-profiles") and len(profiles.job_id) == 64
    assert followups(profiles, f"s3://lab/derivatives/{profiles.result_prefix}/x") == []
    # Profiles off: the chain ends at bundles; the bundles' key does not change.
    off = tract(bundles_atlas="s3://lab/atlas", bundles_params={"profiles": False})
    (alone,) = followups(off, MANIFEST_URI)
    assert followups(alone, f"s3://lab/derivatives/{alone.result_prefix}/m") == []
    assert alone.key == bundles.key
