"""Every pipeline's parameters, typed here so the CLI rejects bad values before anything is
enqueued, and so that a job key can be computed without importing any pipeline: one module per
family of pipelines over ``base.PipelineParams``, and the registry below.
"""

from __future__ import annotations

from typing import Literal

from shared.params.base import MANIFEST_NAME, PipelineParams
from shared.params.bundles import BundlesParams, ProfilesParams
from shared.params.diffusion import DtiParams, TractographyParams
from shared.params.microstructure import MicrostructureParams

PIPELINE_PARAMS: dict[str, type[PipelineParams]] = {
    "dti": DtiParams,
    "tractography": TractographyParams,
    "bundles": BundlesParams,
    "profiles": ProfilesParams,
    "microstructure": MicrostructureParams,
}
PipelineName = Literal["dti", "tractography", "bundles", "profiles", "microstructure"]

__all__ = [
    "MANIFEST_NAME",
    "PIPELINE_PARAMS",
    "BundlesParams",
    "DtiParams",
    "MicrostructureParams",
    "PipelineName",
    "PipelineParams",
    "ProfilesParams",
    "TractographyParams",
]
