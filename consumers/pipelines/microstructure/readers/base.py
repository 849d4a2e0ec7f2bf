"""What every volume reader is, and the lazy array each one hands to Dask.

A reader (one module per input format) answers two questions about the input store: is the
input in my format (``detect``, a cheap look at what ``Probe`` has already read), and what is
in it (``open``: the metadata checked, no voxel read, a ``Source`` returned). ``open_volume``
(``volume.py``) asks them in turn, then checks what every format must satisfy (3D, size,
dtype, a sample of finite values).

A ``Source`` is what ``Volume.array`` holds and what ``da.from_array`` chunks: shape, dtype and
``__getitem__`` over the volume's (z, y, x) voxels. It pickles small (the ``ObjectStore`` and
the metadata, never an open file or a decoded voxel), and opens its file in each process on
first use, so a Dask worker reads only the region its task asks for, straight from the store.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from shared.errors import InvalidInput, MissingInput
from shared.params import MicrostructureParams
from shared.settings import Settings
from shared.store import ObjectStore, open_store, split_uri
from shared.volumes import is_hdf5, is_tiff

Region = tuple[slice, slice, slice]  # in bounds, step 1
SUPPORTED_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def three_d(uri: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise InvalidInput(f"{uri}: expected a 3D volume, got shape {tuple(shape)}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def numeric_dtype(uri: str, value: Any) -> np.dtype[Any]:
    try:
        dtype: np.dtype[Any] = np.dtype(value)
    except TypeError:
        raise InvalidInput(f"{uri}: unsupported dtype {value}") from None
    if dtype.kind not in SUPPORTED_KINDS:
        raise InvalidInput(f"{uri}: unsupported dtype {dtype} (need integers or floats)")
    return dtype


def attribute_voxel_size(
    attrs: dict[str, Any], uri: str
) -> tuple[tuple[float, float, float] | None, str | None]:
    """voxfleet's own ``voxel_size`` (z, y, x) and ``unit`` attributes of a bare array."""
    if "voxel_size" not in attrs:
        return None, None
    value: Any = attrs["voxel_size"]
    try:
        sizes = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise InvalidInput(f"{uri}: attribute voxel_size must be 3 positive numbers, got {value!r}")
    unit = attrs.get("unit")
    return (sizes[0], sizes[1], sizes[2]), unit if isinstance(unit, str) and unit else None


@dataclass(frozen=True)
class Selection:
    """Which volume of a multi-volume input the job means (the job's parameters)."""

    array: str | None = None  # a Zarr group's array
    level: int = 0  # an OME-Zarr image's resolution level
    dataset: str | None = None  # an HDF5 file's dataset

    @classmethod
    def of(cls, params: MicrostructureParams) -> Selection:
        return cls(params.array, params.level, params.dataset)


def _region(key: Any, shape: tuple[int, ...]) -> tuple[Region, tuple[Any, ...]]:
    """The step-1 box that ``key`` (ints, slices, an Ellipsis) covers, and the indexing that
    turns that box into what ``key`` means (steps, dropped axes)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = key.index(Ellipsis)
        key = (*key[:at], *(slice(None),) * (len(shape) - len(key) + 1), *key[at + 1 :])
    key = (*key, *(slice(None),) * (len(shape) - len(key)))
    if len(key) != len(shape):
        raise IndexError(f"too many indices for a volume of shape {shape}")
    box: list[slice] = []
    then: list[Any] = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            picked = range(start, stop, step)
            if len(picked) == 0:
                box.append(slice(0, 0))
                then.append(slice(None))
                continue
            low, high = min(picked[0], picked[-1]), max(picked[0], picked[-1]) + 1
            box.append(slice(low, high))
            then.append(slice(picked[0] - low, None, step))
        else:
            index = int(k) + n if int(k) < 0 else int(k)
            if not 0 <= index < n:
                raise IndexError(f"index {k} is out of bounds for an axis of {n}")
            box.append(slice(index, index + 1))
            then.append(0)
    return (box[0], box[1], box[2]), tuple(then)


class Source(ABC):
    """A 3D volume that reads the voxels it is asked for, and nothing else."""

    ndim: ClassVar[int] = 3

    def __init__(
        self, uri: str, shape: tuple[int, int, int], dtype: np.dtype[Any], chunks: tuple[int, ...]
    ) -> None:
        self.uri = uri
        self.shape = shape
        self.dtype = dtype
        # The storage's own blocks (a Zarr chunk, a TIFF slice): dask's "auto" chunks align
        # to them, and a read of one never decodes its neighbours.
        self.chunks = chunks
        # Identity within a job: two opens of one URI (whose content may have changed) are two
        # dask collections, not one.
        self.token = uuid.uuid4().hex
        self._lock = threading.Lock()  # around what a subclass opened: one reader at a time

    def __dask_tokenize__(self) -> tuple[str, str, str]:
        return (type(self).__name__, self.uri, self.token)

    def __getstate__(self) -> dict[str, Any]:
        # What was opened in this process (the private attributes: files, zarr arrays) stays
        # here; the copy finds them None and opens its own on first use.
        return {k: None if k.startswith("_") else v for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> NDArray[Any]:
        box, then = _region(key, self.shape)
        if any(s.stop <= s.start for s in box):
            data = np.empty(tuple(s.stop - s.start for s in box), self.dtype)
        else:
            data = self.read(box)
        picked: NDArray[Any] = data[then]
        return picked

    @abstractmethod
    def read(self, box: Region) -> NDArray[Any]:
        """The voxels of ``box`` (non-empty, in bounds), as an array of that shape."""

    def read_boxes(self, boxes: list[Region]) -> list[NDArray[Any]]:
        """Several boxes (the load-time sample); a format stored in slices overrides it to
        decode each slice once for all the boxes that cross it."""
        return [self.read(box) for box in boxes]


@dataclass
class Opened:
    """What a reader found: the lazy volume and what its metadata says about it."""

    source: Source
    format: str  # "zarr v3", "ome-zarr 0.4", "tiff stack", "hdf5" ...
    voxel_size: tuple[float, float, float] | None = None  # None: the metadata has none
    unit: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # which array, level, dataset ...


class Probe:
    """What the readers look at to recognise an input, each object read once: the Zarr
    metadata documents at the input's root, the names of its files, the input's own name."""

    def __init__(self, inputs: ObjectStore, settings: Settings) -> None:
        self.inputs = inputs
        self.settings = settings
        self.uri = inputs.uri.rstrip("/")
        self.name = split_uri(self.uri)[1]
        # A name with a file's suffix is one object, not a folder of them.
        self.is_file = is_tiff(self.name) or is_hdf5(self.name)
        self._json: dict[str, dict[str, Any] | None] = {}
        self._files: list[str] | None = None

    def json(self, key: str) -> dict[str, Any] | None:
        """A JSON document at the root (``zarr.json``, ``.zattrs``...), None if absent."""
        if self.is_file:
            return None
        if key not in self._json:
            try:
                raw = self.inputs.get_bytes(key)
            except MissingInput:
                self._json[key] = None
                return None
            except InvalidInput:  # a folder where a file was expected: not this format
                self._json[key] = None
                return None
            try:
                doc = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidInput(f"corrupt {key} at {self.uri}: {exc}") from None
            if not isinstance(doc, dict):
                raise InvalidInput(f"corrupt {key} at {self.uri}: not a JSON object")
            self._json[key] = doc
        return self._json[key]

    def files(self) -> list[str]:
        """The names of the files directly in the input folder."""
        if self._files is None:
            self._files = [] if self.is_file else self.inputs.entries()[0]
        return self._files

    def as_object(self) -> tuple[ObjectStore, str]:
        """The input as one object: (the store of its folder, its key there)."""
        parent, name = split_uri(self.uri)
        return open_store(parent, self.settings), name


class Reader(ABC):
    """One input format."""

    format: ClassVar[str]
    #: The ``Selection`` fields this format understands; any other one set is a mistake.
    selects: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def detect(self, probe: Probe) -> bool:
        """Whether the input is in this format (from what the probe reads, cheaply)."""

    @abstractmethod
    def open(self, probe: Probe, selection: Selection) -> Opened:
        """The volume, its metadata checked (no voxel read); ``InvalidInput`` otherwise."""
