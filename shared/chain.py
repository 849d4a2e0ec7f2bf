"""Recipes as chains of jobs: a job whose parameters name a follow-up (``PipelineParams.followup``)
is followed, once it commits, by that job over its result. tractography with ``bundles_atlas``
-> bundles (profiles on by default) -> profiles is the tractometry recipe.

Every step is a whole job with its own key, record, retries and commit, so a failed step reruns
alone, and every step's JobSpec is known before anything runs: a step's input is the result
prefix of the step before it, which the key decides. That is what lets a campaign resume at the
first uncommitted step of each chain (``--only-missing``) and what lets ``campaign results`` and
``campaign report`` find every step's result without asking Redis.

A follow-up's id is derived from the first job's (``{id}-{pipeline}``, cut to the 64 characters
an id may have), so enqueueing one twice finds the record of the first.
"""

from __future__ import annotations

from typing import Any

from shared.jobspec import JobSpec, result_prefix
from shared.params import PIPELINE_PARAMS

MAX_ID = 64


def followup_id(job_id: str, pipeline: str) -> str:
    suffix = f"-{pipeline}"
    return job_id[: MAX_ID - len(suffix)] + suffix


def next_step(spec: JobSpec, input_uri: str | None = None) -> JobSpec | None:
    """The job that follows ``spec`` once it has committed (at ``input_uri``, by default where
    its key puts it), or None at the end of the chain."""
    found = spec.parameters().followup()
    if found is None:
        return None
    pipeline, params = found
    return JobSpec(
        job_id=followup_id(spec.job_id, pipeline),
        campaign=spec.campaign,
        pipeline=pipeline,
        input_uri=input_uri or f"{spec.results_uri}/{spec.result_prefix}",
        results_uri=spec.results_uri,
        params=params.model_dump(mode="json"),
        cluster=spec.cluster,
        resources=spec.resources,
    )


def steps(spec: JobSpec) -> list[JobSpec]:
    """``spec`` and every job that follows it, in order."""
    chain = [spec]
    while (step := next_step(chain[-1])) is not None:
        chain.append(step)
    return chain


def following(
    pipeline: str, params: dict[str, Any], results_uri: str, subject: str, key: str, job_id: str
) -> list[JobSpec]:
    """The steps after a job known only as a campaign indexes it (pipeline, parameters,
    subject, key): what ``campaign results`` and ``campaign report`` read beyond the first step."""
    found = PIPELINE_PARAMS[pipeline](**params).followup()
    if found is None:
        return []
    step, step_params = found
    first = JobSpec(
        job_id=followup_id(job_id, step) if job_id else followup_id("job", step),
        pipeline=step,
        input_uri=f"{results_uri}/{result_prefix(pipeline, subject, key)}",
        results_uri=results_uri,
        params=step_params.model_dump(mode="json"),
    )
    return steps(first)
