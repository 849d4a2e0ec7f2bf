"""Parameters of the ``microstructure`` pipeline (micro-CT fiber segmentation)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from shared.params.base import PipelineParams


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
