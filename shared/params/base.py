"""The base of every pipeline's parameters: what enters the job key, and what a campaign lists."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from shared.layouts.bids import DWI_SUFFIXES, entities, series_id
from shared.store import split_uri

# A committed result's manifest, the input of a `bundles` job. shared.manifest imports
# shared.jobspec (which imports this module), so the name is repeated rather than imported.
MANIFEST_NAME = "manifest.json"
INT32_MAX = 2**31 - 1  # labels are stored as int32; dipy takes a C int seed


class PipelineParams(BaseModel):
    """Base of every pipeline's parameter model. ``version`` enters the job key: bump it when a
    change alters a pipeline's output, so campaigns re-run instead of skipping."""

    # No NaN or infinity anywhere: `--param gamma=Infinity` parses as JSON, and a NaN compares
    # false against every bound.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    version: ClassVar[str] = "1"
    #: The object that makes a folder one input when a campaign lists a prefix; None: the
    #: inputs are diffusion series, found by their layout (``shared.layouts``: HCP, BIDS...).
    input_marker: ClassVar[str | None] = None
    #: Parameters that steer what happens after the job, not its output: left out of the key.
    key_excludes: ClassVar[frozenset[str]] = frozenset()

    def followup(self) -> tuple[str, PipelineParams] | None:
        """The job to enqueue over this job's committed result when it succeeds: (pipeline,
        its parameters), or None. ``shared.chain`` turns it into a JobSpec."""
        return None

    @classmethod
    def subject_of(cls, input_uri: str) -> str:
        """The subject id a job over ``input_uri`` is filed under: a BIDS series' id
        (``sub-01_ses-1_run-2``, as a campaign listing the dataset names it), else the input's
        last component (an HCP subject's folder, a Zarr array)."""
        name = split_uri(input_uri)[1]
        if name.endswith(DWI_SUFFIXES):
            # The file name carries every entity of the series; the folders above add none.
            return series_id(entities(name)) or name
        return name
