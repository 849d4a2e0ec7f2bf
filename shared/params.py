"""Every pipeline's parameters, typed here so the CLI rejects bad values before anything is
enqueued, and so that a job key can be computed without importing any pipeline.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.checks import check_uri, describe
from shared.layouts.bids import DWI_SUFFIXES, entities, series_id
from shared.store import split_uri

# A committed result's manifest, the input of a `bundles` job. shared.manifest imports
# shared.jobspec (which imports this module), so the name is repeated rather than imported.
MANIFEST_NAME = "manifest.json"


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
_INT32_MAX = 2**31 - 1  # labels are stored as int32; dipy takes a C int seed


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
        le=_INT32_MAX,
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
        if any(label < 0 or label > _INT32_MAX for label in value):
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
        self.followup_params()  # a bad follow-up fails at enqueue, not after the tracking
        return self

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


def _numbers(value: Any) -> Any:
    # `--param sigmas=1,2` arrives as the string "1,2" (not JSON); accept it.
    if isinstance(value, str):
        try:
            return [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("expected numbers separated by commas, e.g. 1,2") from None
    return value


class MicrostructureParams(PipelineParams):
    """ITK Hessian-objectness fiber segmentation of a 3D micro-CT volume (a Zarr v2/v3 array,
    an OME-Zarr image, a TIFF stack or an HDF5 dataset), written as an OME-Zarr image with a
    label image. Sigmas and halos are in voxels."""

    version: ClassVar[str] = "2"  # 2: labels hold the fibers alone; fibers.csv
    # A listed prefix is searched for volumes of every format (shared.volumes), not for this
    # file; naming it keeps microstructure among the pipelines that take --marker.
    input_marker: ClassVar[str] = "zarr.json"
    sigmas: tuple[float, ...] = Field(
        default=(1.0, 2.0),
        min_length=1,
        max_length=6,
        description="Hessian scales (voxels); several: the voxel-wise maximum over scales.",
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Objectness plate-vs-tube weight (small: the "
        "whole fiber cross-section responds, not only its centre line).",
    )
    beta: float = Field(default=1.0, gt=0, le=10, description="Objectness blob-vs-tube weight.")
    gamma: float | None = Field(
        default=None,
        gt=0,
        le=1e12,
        description="Objectness structureness, intensity units; None = "
        "gamma_noise x the noise of an input sample (robust, from neighbour differences).",
    )
    gamma_noise: float = Field(default=0.6, gt=0, le=100, description="See gamma.")
    bright_fibers: bool = Field(default=True, description="Fibers brighter than the matrix.")
    threshold: float | Literal["otsu"] = Field(
        default=0.1,
        description="Objectness above this is fiber (objectness is in [0, 1]); "
        "'otsu': Otsu's threshold of a strided sample of the objectness.",
    )
    min_fiber_voxels: int = Field(
        default=100,
        ge=1,
        le=2**40,
        description="Components smaller than this are not counted as fibers.",
    )
    orientation: bool = Field(default=True, description="Measure the mean fiber direction.")
    chunk_shape: tuple[int, int, int] | None = Field(
        default=None, description="Compute chunk (z, y, x); None = chosen for the halo."
    )
    halo: int | None = Field(
        default=None, ge=0, le=512, description="Voxels of context per side; None = 9 x max sigma."
    )
    boundary: Literal["none", "reflect"] = Field(
        default="none",
        description="Volume faces: 'none' = ITK's own border handling (equals "
        "a whole-volume call); 'reflect' = mirrored halos (what the microstructure reference did).",
    )
    voxel_size: tuple[float, float, float] | None = Field(
        default=None,
        description="(z, y, x) in micrometres; None = an OME-Zarr's multiscales metadata, "
        "a Zarr array's 'voxel_size' attribute, else 1 (unitless).",
    )
    array: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The array inside a Zarr group or xarray dataset (its path in the group); "
        "None = the group's only 3D array.",
    )
    level: int = Field(
        default=0, ge=0, le=31, description="OME-Zarr resolution level (0 = full resolution)."
    )
    dataset: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="HDF5 dataset path; None = /exchange/data (DXchange).",
    )
    qc: bool = Field(default=True, description="Write the orthogonal-slices QC PNG.")

    @field_validator("sigmas", "chunk_shape", "voxel_size", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _numbers(value)

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.5 <= s <= 32 for s in value):
            raise ValueError("sigmas must be between 0.5 and 32 voxels")
        return tuple(sorted(set(value)))  # the same scales give the same job key

    @field_validator("chunk_shape")
    @classmethod
    def _chunks(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and any(not 1 <= c <= 4096 for c in value):
            raise ValueError("chunk sides must be between 1 and 4096")
        return value

    @field_validator("voxel_size")
    @classmethod
    def _voxels(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and any(not 0 < v < 1e6 for v in value):
            raise ValueError("voxel sizes must be positive (micrometres)")
        return value

    @field_validator("array", "dataset", mode="before")
    @classmethod
    def _path_inside(cls, value: Any) -> Any:
        # A path inside the input (a Zarr group, an HDF5 file), never a way out of it.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `--param array=0` reads as JSON: OME-Zarr names its arrays so
        if not isinstance(value, str):
            return value
        parts = value.strip("/").split("/")
        if any(p in ("", ".", "..") for p in parts) or any(c in value for c in "\\\0\n\r\t"):
            raise ValueError(f"{value!r} is not a path of names separated by '/'")
        return "/".join(parts)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0 <= value < 1:
            raise ValueError("a fixed threshold must be in [0, 1): objectness is in [0, 1]")
        return value


class BundlesParams(PipelineParams):
    """RecoBundles segmentation of a committed tractography result (the job's input is that
    result's prefix, the folder of its manifest.json) against an atlas of model bundles:
    whole-brain streamline registration to the atlas, then every model bundle recognised in
    parallel. Distances and lengths are in millimetres (RAS)."""

    version: ClassVar[str] = "1"
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
        le=_INT32_MAX,
        description="Seeds registration and clustering; each bundle draws from (seed, its name), "
        "so a bundle's result does not depend on the other bundles or their order.",
    )
    output_format: Literal["trk", "trx"] = Field(default="trk", description="Bundle file format.")
    qc: bool = Field(default=True, description="Write the bundles QC PNG.")

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


PIPELINE_PARAMS: dict[str, type[PipelineParams]] = {
    "dti": DtiParams,
    "tractography": TractographyParams,
    "bundles": BundlesParams,
    "microstructure": MicrostructureParams,
}
PipelineName = Literal["dti", "tractography", "bundles", "microstructure"]
