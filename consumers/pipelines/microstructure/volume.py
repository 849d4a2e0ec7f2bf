"""Opening and validating a 3D micro-CT volume (the microstructure pipeline's input) in any of
the formats ``readers/`` reads, with a small sample of it read for intensity statistics.

The readers are asked in turn (``READERS``): an OME-Zarr image, a Zarr array or group (v2 or
v3), TIFF files, an HDF5 file. The one that recognises the input checks its own metadata; then
every format must hold a 3D volume within the voxel limit, of integers or floats, whose sample
is finite. Every way an input can be wrong ends in ``InvalidInput`` with one line. Store
failures (``TransientError``, ``PermanentStoreError``) pass through unchanged so they are
retried or failed as such.

``readers/__init__.py`` stays empty, as the science packages' do: a Dask worker that unpickles a
TIFF slice reader imports ``readers.tiff`` and ``readers.base``, not zarr or h5py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.microstructure.readers.base import Probe, Reader, Region, Selection, Source
from consumers.pipelines.microstructure.readers.hdf5 import Hdf5Reader
from consumers.pipelines.microstructure.readers.ome_zarr import OmeZarrReader
from consumers.pipelines.microstructure.readers.tiff import TiffReader
from consumers.pipelines.microstructure.readers.zarr_array import ZarrArrayReader
from shared.errors import InvalidInput, VoxfleetError
from shared.settings import Settings
from shared.store import ObjectStore

SAMPLE_SIDE = 64  # sample boxes of up to 64^3 voxels ...
SAMPLE_AT = (0.25, 0.75)  # ... centred at these fractions of each axis: 8 boxes
#: In the order they are asked: an OME-Zarr image is a Zarr group, so it goes first; a folder is
#: listed (for TIFF and HDF5 files) only once it is no Zarr node.
READERS: tuple[Reader, ...] = (OmeZarrReader(), ZarrArrayReader(), TiffReader(), Hdf5Reader())
_SELECTION_HELP = {
    "array": "array= picks an array of a Zarr group",
    "level": "level= picks an OME-Zarr resolution level",
    "dataset": "dataset= picks an HDF5 dataset",
}


@dataclass
class Volume:
    array: Source  # lazy: da.from_array chunks it, each task reads its own region
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    voxel_size: tuple[float, float, float]
    unit: str | None
    sample: list[NDArray[Any]] = field(repr=False)  # boxes read at load
    sample_location: dict[str, Any] = field(default_factory=dict)
    format: str = ""  # "zarr v3", "ome-zarr 0.5", "tiff stack", "hdf5" ...
    detail: dict[str, Any] = field(default_factory=dict)  # the array, level or dataset read


def _boxes(shape: tuple[int, int, int]) -> list[Region]:
    """Up to eight boxes spread over the volume: a few storage chunks' worth of reading, not a
    pass over the whole array (a strided read would fetch every chunk)."""
    boxes: list[Region] = []
    for fz in SAMPLE_AT:
        for fy in SAMPLE_AT:
            for fx in SAMPLE_AT:
                sides = []
                for n, f in zip(shape, (fz, fy, fx), strict=True):
                    side = min(SAMPLE_SIDE, n)
                    start = min(max(0, round(n * f - side / 2)), n - side)
                    sides.append(slice(start, start + side))
                box = (sides[0], sides[1], sides[2])
                if box not in boxes:
                    boxes.append(box)
    return boxes


def _sample(source: Source) -> tuple[list[NDArray[Any]], dict[str, Any]]:
    boxes = _boxes(source.shape)
    parts = source.read_boxes(boxes)
    where = [[[s.start, s.stop] for s in box] for box in boxes]
    return parts, {"boxes_zyx": where, "voxels": int(sum(p.size for p in parts))}


def _reader(probe: Probe) -> Reader:
    for reader in READERS:
        if reader.detect(probe):
            return reader
    raise InvalidInput(
        f"not a Zarr array, OME-Zarr image, TIFF stack or HDF5 file: no zarr.json, .zarray, "
        f".zgroup, *.tif or *.h5 at {probe.uri}"
    )


def _check_selection(reader: Reader, selection: Selection, uri: str) -> None:
    given = {"array": selection.array is not None, "level": selection.level != 0}
    given["dataset"] = selection.dataset is not None
    for name, set_ in given.items():
        if set_ and name not in reader.selects:
            raise InvalidInput(f"{uri}: {_SELECTION_HELP[name]}; this input is {reader.format}")


def open_volume(
    inputs: ObjectStore,
    settings: Settings,
    voxel_size: tuple[float, float, float] | None = None,
    *,
    sample: bool = True,
    selection: Selection | None = None,
) -> Volume:
    """The validated volume; ``sample=False`` checks the metadata only (no voxel is read).
    ``voxel_size`` (micrometres) overrides what the input's metadata says."""
    selection = selection or Selection()
    probe = Probe(inputs, settings)
    reader = _reader(probe)
    _check_selection(reader, selection, probe.uri)
    opened = reader.open(probe, selection)
    source = opened.source
    shape = source.shape
    if min(shape) < 1:
        raise InvalidInput(f"{source.uri}: empty volume, shape {shape}")
    if math.prod(shape) > settings.max_voxels:
        raise InvalidInput(
            f"{source.uri}: {math.prod(shape)} voxels is more than the limit of "
            f"{settings.max_voxels} (VOXFLEET_MAX_VOXELS)"
        )
    unit: str | None
    if voxel_size is not None:
        sizes, unit = voxel_size, "micrometer"
    elif opened.voxel_size is not None:
        sizes, unit = opened.voxel_size, opened.unit
    else:
        sizes, unit = (1.0, 1.0, 1.0), None  # unknown: scales in voxels, no unit
    volume = Volume(source, shape, source.dtype, sizes, unit, [], {}, opened.format, opened.detail)
    if not sample:
        return volume
    try:
        boxes, where = _sample(source)
    except VoxfleetError:
        raise  # the store's own errors: retried (transient) or failed (permanent) as such
    except Exception as exc:  # a codec that cannot decode a chunk raises its own types
        raise InvalidInput(
            f"{source.uri}: a chunk does not decode ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]})"
        ) from None
    finite = [np.count_nonzero(np.isfinite(box)) for box in boxes]
    if source.dtype.kind == "f" and sum(finite) < where["voxels"]:
        bad = where["voxels"] - sum(finite)
        raise InvalidInput(
            f"{source.uri}: the volume holds NaN or infinite values ({bad} in the sample)"
        )
    volume.sample, volume.sample_location = boxes, where
    return volume
