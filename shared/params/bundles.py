"""Parameters of the ``bundles`` pipeline (RecoBundles over a committed tractography result)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from shared.checks import check_uri, describe
from shared.params.base import INT32_MAX, MANIFEST_NAME, PipelineParams


class BundlesParams(PipelineParams):
    """RecoBundles segmentation of a committed tractography result (the job's input is that
    result's prefix, the folder of its manifest.json) against an atlas of model bundles:
    whole-brain streamline registration to the atlas, then every model bundle recognised in
    parallel. Distances and lengths are in millimetres (RAS)."""

    version: ClassVar[str] = "3"  # 2: tract profiles; 3: profiles are their own job, flips kept
    input_marker: ClassVar[str] = MANIFEST_NAME
    atlas: str = Field(
        min_length=1,
        max_length=1024,
        description="Folder (path or s3://) of model bundles (*.trk/*.trx), optionally with "
        "whole_brain/*.trk|trx, the atlas tractogram the subject is registered to.",
    )
    whole_brain_slr: bool = Field(default=True, description="Register to the atlas first.")
    slr_transform: Literal["rigid", "similarity", "affine"] = Field(
        default="affine", description="Whole-brain SLR transform (dipy's whole_brain_slr x0)."
    )
    slr_progressive: bool = Field(
        default=True, description="Progressive SLR (translation, rigid, ... up to the transform)."
    )
    slr_min_cluster: int = Field(
        default=50, ge=1, description="QuickBundles clusters smaller than this are not registered."
    )
    slr_min_length: float = Field(default=50.0, ge=0, description="Streamlines registered: longer")
    slr_max_length: float = Field(default=250.0, gt=0, description="... and shorter than these.")
    min_length: float = Field(default=50.0, ge=0, description="RecoBundles: longer streamlines.")
    clust_thr: float = Field(default=15.0, gt=0, description="Whole-brain QuickBundles threshold.")
    model_clust_thr: float = Field(default=2.5, gt=0, description="Model QuickBundles threshold.")
    reduction_thr: float = Field(default=15.0, gt=0, description="Search-space reduction (MDF).")
    pruning_thr: float = Field(default=8.0, gt=0, description="Pruning threshold (MDF).")
    local_slr: bool = Field(default=True, description="RecoBundles' local SLR per bundle.")
    random_seed: int = Field(
        default=1,
        ge=0,
        le=INT32_MAX,
        description="Seeds registration and clustering; each bundle draws from (seed, its name), "
        "so a bundle's result does not depend on the other bundles or their order.",
    )
    output_format: Literal["trk", "trx"] = Field(default="trk", description="Bundle file format.")
    qc: bool = Field(default=True, description="Write the bundles QC PNG.")
    profiles: bool = Field(
        default=True,
        description="On success, enqueue a `profiles` job over this result: FA and MD along "
        "each bundle (tract profiles).",
    )
    profiles_params: dict[str, Any] | None = Field(
        default=None, description="Parameters of that follow-up job (ProfilesParams, JSON)."
    )
    # Whether profiles follow does not change the bundles: not part of the key.
    key_excludes: ClassVar[frozenset[str]] = frozenset({"profiles", "profiles_params"})

    @classmethod
    def subject_of(cls, input_uri: str) -> str:
        # A tractography result lives at {results}/{subject}/tractography/{key}.
        parts = input_uri.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-2] == "tractography":
            return parts[-3]
        return super().subject_of(input_uri)

    @field_validator("atlas")
    @classmethod
    def _check_atlas(cls, value: str) -> str:
        return check_uri(value)

    @model_validator(mode="after")
    def _lengths(self) -> BundlesParams:
        if self.slr_min_length >= self.slr_max_length:
            raise ValueError("slr_min_length must be below slr_max_length")
        if self.profiles_params is not None and not self.profiles:
            raise ValueError("profiles_params needs profiles=true")
        self.followup()  # a bad follow-up fails at enqueue, not after the segmentation
        return self

    def followup(self) -> tuple[str, PipelineParams] | None:
        if not self.profiles:
            return None
        try:
            return "profiles", ProfilesParams(**(self.profiles_params or {}))
        except ValidationError as exc:
            raise ValueError(f"profiles follow-up: {describe(exc)}") from None


class ProfilesParams(PipelineParams):
    """Tract profiles (tractometry) of a committed bundles result (the job's input is that
    result's prefix): every bundle's FA and MD at ``profile_points`` nodes, oriented by the
    model bundle and Gaussian-weighted (dipy's ``afq_profile``), from the maps of the
    tractography result the bundles came from."""

    input_marker: ClassVar[str] = MANIFEST_NAME
    metrics: tuple[Literal["fa", "md"], ...] = Field(
        default=("fa", "md"), min_length=1, description="Maps to sample along each bundle."
    )
    profile_points: int = Field(default=100, ge=10, le=1000, description="Nodes per profile.")
    qc: bool = Field(default=True, description="Write the profiles QC PNG.")

    @classmethod
    def subject_of(cls, input_uri: str) -> str:
        # A bundles result lives at {results}/{subject}/bundles/{key}.
        parts = input_uri.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-2] == "bundles":
            return parts[-3]
        return super().subject_of(input_uri)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # `--param metrics=fa,md`
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("metrics")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(value)))  # the same maps give the same key
