"""Opening and validating a 3D Zarr volume (the microstructure pipeline's input), with a small
sample of it read for intensity statistics.

Every way an input can be wrong ends in ``InvalidInput`` with one line: no Zarr array there,
corrupt metadata, a group instead of an array, not 3D, too many voxels, a dtype that is not an
integer or a float, a bad ``voxel_size`` attribute, NaN or inf in the sample. Store failures
(``TransientError``, ``PermanentStoreError``) pass through unchanged so they are retried or
failed as such.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.errors import InvalidInput, MissingInput, VoxfleetError
from shared.settings import Settings
from shared.store import ObjectStore

SAMPLE_SIDE = 64  # sample boxes of up to 64^3 voxels ...
SAMPLE_AT = (0.25, 0.75)  # ... centred at these fractions of each axis: 8 boxes
SUPPORTED_KINDS = "biuf"  # bool, signed and unsigned integers, floats


@dataclass
class Volume:
    array: zarr.Array[Any]
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    voxel_size: tuple[float, float, float]
    unit: str | None
    sample: list[NDArray[Any]] = field(repr=False)  # boxes read at load
    sample_location: dict[str, Any] = field(default_factory=dict)


def _metadata(inputs: ObjectStore) -> dict[str, Any]:
    """The array's zarr.json, checked before zarr sees it: a clear reason beats its traceback."""
    try:
        raw = inputs.get_bytes("zarr.json")
    except MissingInput:
        if inputs.exists(".zarray"):
            raise InvalidInput(
                f"{inputs.uri} is a Zarr v2 array; convert it to Zarr v3 (zarr.json)"
            ) from None
        raise InvalidInput(f"not a Zarr array: no zarr.json at {inputs.uri}") from None
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"corrupt zarr.json at {inputs.uri}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise InvalidInput(f"zarr.json at {inputs.uri} is not Zarr v3 metadata")
    if meta.get("node_type") == "group":
        hint = ""
        multiscales = (meta.get("attributes") or {}).get("ome", {}).get("multiscales")
        if isinstance(multiscales, list) and multiscales:
            path = (multiscales[0].get("datasets") or [{}])[0].get("path")
            hint = f" (an OME-Zarr image: use {inputs.uri}/{path})" if path else ""
        raise InvalidInput(f"{inputs.uri} is a Zarr group, not an array{hint}")
    if meta.get("node_type") != "array":
        raise InvalidInput(f"zarr.json at {inputs.uri} describes no array")
    return meta


def _voxel_size(
    array: zarr.Array[Any], given: tuple[float, float, float] | None, uri: str
) -> tuple[tuple[float, float, float], str | None]:
    if given is not None:
        return given, "micrometer"
    attrs = dict(array.attrs)
    if "voxel_size" not in attrs:
        return (1.0, 1.0, 1.0), None  # unknown: scales in voxels, no unit
    value: Any = attrs["voxel_size"]
    try:
        sizes = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise InvalidInput(f"{uri}: attribute voxel_size must be 3 positive numbers, got {value!r}")
    unit = attrs.get("unit")
    return (sizes[0], sizes[1], sizes[2]), unit if isinstance(unit, str) and unit else None


def _sample(array: zarr.Array[Any]) -> tuple[list[NDArray[Any]], dict[str, Any]]:
    """Up to eight boxes spread over the volume: a few storage chunks' worth of reading, not a
    pass over the whole array (a strided read would fetch every chunk)."""
    boxes: list[list[list[int]]] = []
    parts = []
    seen: set[tuple[int, ...]] = set()
    for fz in SAMPLE_AT:
        for fy in SAMPLE_AT:
            for fx in SAMPLE_AT:
                box = []
                for n, f in zip(array.shape, (fz, fy, fx), strict=True):
                    side = min(SAMPLE_SIDE, n)
                    start = min(max(0, round(n * f - side / 2)), n - side)
                    box.append([start, start + side])
                key = tuple(v for pair in box for v in pair)
                if key in seen:
                    continue
                seen.add(key)
                boxes.append(box)
                parts.append(np.asarray(array[tuple(slice(a, b) for a, b in box)]))
    return parts, {"boxes_zyx": boxes, "voxels": int(sum(p.size for p in parts))}


def open_volume(
    inputs: ObjectStore,
    settings: Settings,
    voxel_size: tuple[float, float, float] | None = None,
    *,
    sample: bool = True,
) -> Volume:
    """The validated array; ``sample=False`` checks the metadata only (no voxel is read)."""
    _metadata(inputs)
    try:
        array = zarr.open_array(ObjectZarrStore(inputs, read_only=True), mode="r", zarr_format=3)
    except VoxfleetError:
        raise
    except Exception as exc:  # zarr's metadata parsing raises many types; all mean "corrupt"
        raise InvalidInput(
            f"corrupt zarr.json at {inputs.uri}: {type(exc).__name__}: {exc}"
        ) from None
    shape = tuple(int(n) for n in array.shape)
    if len(shape) != 3:
        raise InvalidInput(f"{inputs.uri}: expected a 3D volume, got shape {shape}")
    if min(shape) < 1:
        raise InvalidInput(f"{inputs.uri}: empty volume, shape {shape}")
    if math.prod(shape) > settings.max_voxels:
        raise InvalidInput(
            f"{inputs.uri}: {math.prod(shape)} voxels is more than the limit of "
            f"{settings.max_voxels} (VOXFLEET_MAX_VOXELS)"
        )
    try:
        dtype = np.dtype(array.dtype)
    except TypeError:
        raise InvalidInput(f"{inputs.uri}: unsupported dtype {array.dtype}") from None
    if dtype.kind not in SUPPORTED_KINDS:
        raise InvalidInput(f"{inputs.uri}: unsupported dtype {dtype} (need integers or floats)")
    sizes, unit = _voxel_size(array, voxel_size, inputs.uri)
    if not sample:
        return Volume(array, (shape[0], shape[1], shape[2]), dtype, sizes, unit, [], {})
    try:
        boxes, where = _sample(array)
    except VoxfleetError:
        raise  # the store's own errors: retried (transient) or failed (permanent) as such
    except Exception as exc:  # a codec that cannot decode a chunk raises its own types
        raise InvalidInput(
            f"{inputs.uri}: a chunk does not decode ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]})"
        ) from None
    finite = [np.count_nonzero(np.isfinite(box)) for box in boxes]
    if dtype.kind == "f" and sum(finite) < where["voxels"]:
        bad = where["voxels"] - sum(finite)
        raise InvalidInput(
            f"{inputs.uri}: the volume holds NaN or infinite values ({bad} in the sample)"
        )
    return Volume(array, (shape[0], shape[1], shape[2]), dtype, sizes, unit, boxes, where)
