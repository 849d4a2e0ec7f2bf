"""Parameters of the diffusion pipelines: ``dti`` and ``tractography``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from shared.checks import describe
from shared.params.base import INT32_MAX, PipelineParams
from shared.params.bundles import BundlesParams


class DtiParams(PipelineParams):
    """Tensor fit (FA and MD maps) of an HCP-layout subject."""

    version: ClassVar[str] = "1"
    fit_method: Literal["WLS", "OLS", "NLLS"] = Field(
        default="WLS", description="dipy TensorModel fit method (weighted least squares default)."
    )
    b0_threshold: float = Field(default=50.0, ge=0, le=1000, description="b-values <= are b0.")
    chunks: int | None = Field(
        default=None, ge=1, le=4096, description="Chunks of mask voxels; None = 4 per worker."
    )
    qc: bool = Field(default=True, description="Write the FA mid-slice QC PNG.")


# FreeSurfer aseg white matter, as the reference pipeline uses it: cerebral WM (2, 41), brain
# stem (16), WM hypointensities (77), fornix (250) and the corpus callosum (251-255).
HCP_WM_LABELS: tuple[int, ...] = (2, 16, 41, 77, 250, 251, 252, 253, 254, 255)


class TractographyParams(PipelineParams):
    """White-matter mask, tensor FA, CSD fODFs and sharded whole-brain tracking of an HCP-layout
    subject. Lengths and steps are in millimetres, angles in degrees."""

    version: ClassVar[str] = "2"  # 2: the shards merged into tractogram.trx beside them
    b0_threshold: float = Field(default=50.0, ge=0, le=1000, description="b-values <= are b0.")
    wm_source: Literal["auto", "segmentation", "fa"] = Field(
        default="auto",
        description="White matter from the input's segmentation (HCP aparc+aseg, QSIPrep "
        "dseg), from FA, or auto: the segmentation where the layout has one, else FA "
        "(recorded in the summary). 'aparc' is accepted for segmentation.",
    )
    wm_labels: tuple[int, ...] = Field(
        default=HCP_WM_LABELS,
        min_length=1,
        max_length=512,
        description="FreeSurfer labels counted as white matter (a tissue dseg uses class 3).",
    )
    fa_wm_threshold: float = Field(
        default=0.2, gt=0, lt=1, description="FA above which a brain voxel is WM (wm_source=fa)."
    )
    response: Literal["mask", "auto"] = Field(
        default="mask",
        description="Single-fibre response from WM voxels with FA > response_fa_thr (mask), "
        "or dipy's auto_response_ssst in a cube at the volume centre (auto).",
    )
    response_roi_radii: int = Field(
        default=10, ge=1, le=200, description="Half-size in voxels of the auto-response cube."
    )
    response_fa_thr: float = Field(
        default=0.7, gt=0, lt=1, description="FA above which a voxel enters the response."
    )
    sh_order_max: int = Field(default=8, ge=2, le=12, description="CSD spherical-harmonic order.")
    seeds_per_voxel: int = Field(
        default=1,
        ge=1,
        le=27,
        description="Seeds per white-matter voxel, on a regular grid (8 = 2x2x2; others are "
        "factored into a grid as even as possible, e.g. 4 = 2x2x1).",
    )
    step_size: float = Field(default=0.5, gt=0, le=10, description="Tracking step (mm).")
    max_angle: float = Field(default=30.0, gt=0, le=90, description="Largest turn per step (deg).")
    fa_stop: float = Field(default=0.1, ge=0, lt=1, description="Tracking stops where FA < this.")
    min_len: int = Field(default=10, ge=0, le=1000, description="Shorter streamlines dropped (mm).")
    max_len: int = Field(default=250, ge=1, le=5000, description="Longest streamline kept (mm).")
    tracker: Literal["deterministic", "probabilistic"] = Field(
        default="deterministic", description="dipy's fast tracker: deterministic or probabilistic."
    )
    random_seed: int = Field(
        default=1,
        ge=1,
        le=INT32_MAX,
        description="Probabilistic tracking seed; >= 1 so a retried shard redraws the same "
        "streamlines (dipy seeds from the clock for 0).",
    )
    shards: int | None = Field(
        default=None, ge=1, le=100_000, description="Tractogram shards; None = 4 per worker."
    )
    csd_chunks: int | None = Field(
        default=None, ge=1, le=4096, description="Chunks of WM voxels for CSD; None = 4 per worker."
    )
    output_format: Literal["trk", "trx"] = Field(default="trk", description="Shard file format.")
    qc: bool = Field(default=True, description="Write the FA / WM / density QC PNG.")
    bundles_atlas: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Atlas URI: on success, enqueue a `bundles` job over this result with it.",
    )
    bundles_params: dict[str, Any] | None = Field(
        default=None, description="Parameters of that follow-up job (BundlesParams, JSON)."
    )
    # Where the streamlines go next does not change them: the key (and every committed
    # tractography result) stays the same with or without a follow-up.
    key_excludes: ClassVar[frozenset[str]] = frozenset({"bundles_atlas", "bundles_params"})

    @field_validator("wm_source", mode="before")
    @classmethod
    def _aparc(cls, value: Any) -> Any:
        return "segmentation" if value == "aparc" else value  # its name before BIDS inputs

    @field_validator("wm_labels", mode="before")
    @classmethod
    def _label_list(cls, value: Any) -> Any:
        # `--param wm_labels=2,41` arrives as the string "2,41" (not JSON); accept it.
        if isinstance(value, str):
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError("expected integers separated by commas, e.g. 2,41") from None
        return value

    @field_validator("wm_labels")
    @classmethod
    def _labels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(label < 0 or label > INT32_MAX for label in value):
            raise ValueError("labels must be between 0 and 2^31 - 1")
        # Sorted and unique: the same set of labels gives the same job key.
        return tuple(sorted(set(value)))

    @field_validator("sh_order_max")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (the symmetric SH basis has only even orders)")
        return value

    @model_validator(mode="after")
    def _lengths(self) -> TractographyParams:
        if self.min_len >= self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must be below max_len ({self.max_len})")
        if self.bundles_params is not None and self.bundles_atlas is None:
            raise ValueError("bundles_params needs bundles_atlas")
        self.followup()  # a bad follow-up fails at enqueue, not after the tracking
        return self

    def followup(self) -> tuple[str, PipelineParams] | None:
        bundles = self.followup_params()
        return None if bundles is None else ("bundles", bundles)

    def followup_params(self) -> BundlesParams | None:
        """The ``bundles`` job to enqueue when this one succeeds, if any."""
        if self.bundles_atlas is None:
            return None
        extra = self.bundles_params or {}
        if "atlas" in extra:
            raise ValueError("give the atlas as bundles_atlas, not inside bundles_params")
        try:
            return BundlesParams(atlas=self.bundles_atlas, **extra)
        except ValidationError as exc:
            raise ValueError(f"bundles follow-up: {describe(exc)}") from None
