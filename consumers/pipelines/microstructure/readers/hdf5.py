"""HDF5 volumes: one 3D dataset of a ``.h5``/``.hdf5``/``.nxs`` file, ``/exchange/data`` by
default (the DXchange layout of tomography beamlines), ``dataset=/path`` for another. The input
URI names the file, or a folder holding it as its only HDF5 file (a scan's folder, with its
logs), as for a multi-page TIFF.

h5py reads the file through ``ObjectFile`` (its ``fileobj`` driver), so only the file's
metadata and the chunks (or, for a contiguous dataset, the byte ranges) of the region asked for
are fetched, on S3 as ranged GETs. The voxel size comes from the dataset's ``voxel_size`` and
``unit`` attributes where it has them (DXchange keeps the pixel size in instrument metadata
that is not reliably the reconstruction's voxel size, so it is not guessed from there).
"""

from __future__ import annotations

from typing import Any

import h5py  # type: ignore[import-untyped]
import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.microstructure.readers.base import (
    Opened,
    Probe,
    Reader,
    Region,
    Selection,
    Source,
    attribute_voxel_size,
    numeric_dtype,
    three_d,
)
from consumers.pipelines.microstructure.readers.objectfile import ObjectFile
from shared.errors import InvalidInput, VoxfleetError, one_line_reason
from shared.store import ObjectStore
from shared.volumes import is_hdf5

DEFAULT_DATASET = "exchange/data"
SHOWN = 6  # datasets named when the one asked for is not there
DIRECT_READ = 8 * 1024
SLAB_BYTES = 64 * 1024**2  # the natural block of a contiguous dataset: z slabs this large


def _open(store: ObjectStore, key: str, size: int) -> tuple[Any, ObjectFile]:
    # HDF5 reads its metadata in pieces of a few hundred bytes (cached blocks) and each chunk,
    # or each sieve buffer of a contiguous dataset, in one read of kilobytes (fetched alone).
    fh = ObjectFile(store, key, size, direct=DIRECT_READ)
    try:
        return h5py.File(fh, "r"), fh
    except Exception as exc:
        if fh.failure is not None:
            raise fh.failure from None  # h5py wraps what the file handle raised in OSError
        raise InvalidInput(
            f"{store.uri_for(key)}: not a readable HDF5 file ({one_line_reason(exc)})"
        ) from None


def _datasets(file: Any) -> list[str]:
    found: list[str] = []

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            found.append(f"/{name} {'x'.join(map(str, node.shape)) or 'scalar'}")

    file.visititems(visit)
    return found


class Hdf5Source(Source):
    """One dataset's voxels; the file is opened once per process, on first use."""

    def __init__(
        self,
        uri: str,
        store: ObjectStore,
        key: str,
        size: int,
        path: str,
        dataset: Any,
    ) -> None:
        shape = three_d(uri, tuple(dataset.shape))
        dtype = numeric_dtype(uri, dataset.dtype)
        slab = max(1, min(shape[0], SLAB_BYTES // max(1, shape[1] * shape[2] * dtype.itemsize)))
        super().__init__(uri, shape, dtype, tuple(dataset.chunks or (slab, shape[1], shape[2])))
        self.store = store
        self.key = key
        self.file_size = size
        self.path = path
        self._dataset: Any = dataset
        self._file: ObjectFile | None = None

    def read(self, box: Region) -> NDArray[Any]:
        with self._lock:  # one h5py file handle per process, read by one thread at a time
            try:
                if self._dataset is None:
                    file, self._file = _open(self.store, self.key, self.file_size)
                    self._dataset = file[self.path]
                return np.asarray(self._dataset[box])
            except VoxfleetError:
                raise
            except Exception as exc:
                failure = self._file.failure if self._file is not None else None
                self._dataset = None  # opened again on the next read
                if failure is not None:
                    raise failure from None
                raise InvalidInput(
                    f"{self.uri}: a chunk does not decode ({one_line_reason(exc)[:160]})"
                ) from None


class Hdf5Reader(Reader):
    format = "HDF5"
    selects = frozenset({"dataset"})

    def detect(self, probe: Probe) -> bool:
        if probe.is_file:
            return is_hdf5(probe.name)
        return any(is_hdf5(n) for n in probe.files())

    def open(self, probe: Probe, selection: Selection) -> Opened:
        if probe.is_file:
            store, key = probe.as_object()
        else:
            names = [n for n in probe.files() if is_hdf5(n)]
            if len(names) > 1:
                raise InvalidInput(
                    f"{probe.uri} holds {len(names)} HDF5 files ({', '.join(names[:SHOWN])}); "
                    "name one as the input"
                )
            store, key = probe.inputs, names[0]
        size = store.size(key)  # MissingInput for no file; and ObjectFile needs no HEAD
        file, _ = _open(store, key, size)
        path = selection.dataset or DEFAULT_DATASET
        uri = f"{store.uri_for(key)}:/{path}"
        node = file.get(path)
        if node is None or not isinstance(node, h5py.Dataset):
            have = _datasets(file)
            shown = ", ".join(have[:SHOWN]) + (" ..." if len(have) > SHOWN else "") or "none"
            what = "a group, not a dataset" if node is not None else "no such dataset"
            raise InvalidInput(
                f"{store.uri_for(key)}: /{path} is {what} (datasets: {shown}); "
                "name one with --param dataset=/PATH"
            )
        sizes, unit = attribute_voxel_size(dict(node.attrs), uri)
        source = Hdf5Source(uri, store, key, size, path, node)
        return Opened(source, "hdf5", sizes, unit, {"dataset": f"/{path}"})
