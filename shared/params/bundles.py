"""Parameters of the ``bundles`` pipeline (RecoBundles over a committed tractography result)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from shared.checks import check_uri
from shared.params.base import INT32_MAX, MANIFEST_NAME, PipelineParams


class BundlesParams(PipelineParams):
    """RecoBundles segmentation of a committed tractography result (the job's input is that
    result's prefix, the folder of its manifest.json) against an atlas of model bundles:
    whole-brain streamline registration to the atlas, then every model bundle recognised in
    parallel. Distances and lengths are in millimetres (RAS)."""

    version: ClassVar[str] = "2"  # 2: tract profiles
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
        description="Tract profiles: FA and MD along each bundle (Gaussian-weighted, oriented by "
        "the model bundle), written as profiles.parquet.",
    )
    profile_points: int = Field(default=100, ge=10, le=1000, description="Nodes per profile.")

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
        return self
