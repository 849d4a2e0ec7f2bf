"""TIFF stacks: a folder (or S3 prefix) of 2D slices, one per file, in the order of the number in
their names (``shared.volumes.tiff_series``, the rules campaign discovery follows too), or one
multi-page TIFF file (the input URI names the file, or a folder holding only it).

Nothing is decoded at ``open``: every slice's header is read (tifffile parses a page's tags
without its pixels; on S3 one or two ranged reads of a few kB each), so slices of different
shapes or dtypes, a gap in the numbering, a multi-page file among slices, or a compression this
installation cannot decode fail before any cluster starts. Reading decodes one slice at a time
and only the slices a region covers; each file is read through ``ObjectFile`` (ranged reads).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, cast

import numpy as np
import tifffile
from numpy.typing import NDArray

from consumers.pipelines.microstructure.readers.base import (
    Opened,
    Probe,
    Reader,
    Region,
    Selection,
    Source,
    numeric_dtype,
    three_d,
)
from consumers.pipelines.microstructure.readers.objectfile import ObjectFile
from shared.errors import InvalidInput, VoxfleetError, one_line_reason
from shared.store import ObjectStore
from shared.volumes import LOOK_THREADS, is_tiff, tiff_series

# A TIFF's header and directories are a few hundred bytes, its pixels one large read each: small
# blocks keep a header check of thousands of slices to a few kB per slice.
HEADER_BLOCK = 16 * 1024


def _tiff(fh: ObjectFile) -> tifffile.TiffFile:
    return tifffile.TiffFile(cast(IO[bytes], fh))  # a seekable binary stream is what it needs


def _failed(fh: ObjectFile, uri: str, exc: Exception) -> VoxfleetError:
    if fh.failure is not None:
        return fh.failure  # the store's own error, which tifffile may have wrapped
    return InvalidInput(f"{uri}: not a readable TIFF ({one_line_reason(exc)})")


def _decodable(page: Any, uri: str) -> None:
    try:
        tifffile.TIFF.DECOMPRESSORS[page.compression]
    except KeyError as exc:
        raise InvalidInput(f"{uri}: {one_line_reason(exc).strip(chr(34))}") from None


def _header(store: ObjectStore, key: str) -> tuple[tuple[int, ...], Any, int]:
    """(shape, dtype, pages) of a slice file's first page, from its header alone."""
    uri = store.uri_for(key)
    fh = ObjectFile(store, key, block=HEADER_BLOCK)
    try:
        with _tiff(fh) as tif:
            page = tif.pages.first
            _decodable(page, uri)
            return tuple(page.shape), page.dtype, len(tif.pages)
    except VoxfleetError:
        raise
    except Exception as exc:
        raise _failed(fh, uri, exc) from None


def _rows(fh: ObjectFile, page: Any, byteorder: str, ys: slice) -> NDArray[Any]:
    """Rows ``ys`` of a page: for uncompressed strips (what beamlines mostly write) a ranged
    read of those rows alone, since a task whose region is a part of each slice would otherwise
    fetch every slice whole; any other layout is decoded whole and cut."""
    key = page.keyframe
    plain = (
        key.compression == 1
        and not key.is_tiled
        and key.samplesperpixel == 1
        and key.fillorder == 1
        and key.dtype is not None
        and key.dtype.itemsize * 8 == key.bitspersample
    )
    if not plain:
        data: NDArray[Any] = page.asarray()[ys]
        return data
    dtype = key.dtype.newbyteorder(byteorder)
    width, per_strip = int(key.imagewidth), int(key.rowsperstrip)
    row_bytes = width * dtype.itemsize
    out = np.empty((ys.stop - ys.start, width), key.dtype)
    row = ys.start
    while row < ys.stop:
        strip = row // per_strip
        last = min(ys.stop, (strip + 1) * per_strip)
        fh.seek(int(page.dataoffsets[strip]) + (row - strip * per_strip) * row_bytes)
        raw = fh.read((last - row) * row_bytes)
        if len(raw) != (last - row) * row_bytes:
            raise InvalidInput(f"{fh.name}: truncated (rows {row}..{last - 1} are missing)")
        out[row - ys.start : last - ys.start] = np.frombuffer(raw, dtype).reshape(-1, width)
        row = last
    return out


class TiffStack(Source):
    """Slices ``names`` (in order) below ``store``: each read decodes one slice at a time."""

    def __init__(
        self,
        uri: str,
        store: ObjectStore,
        names: list[str],
        shape: tuple[int, int, int],
        dtype: Any,
    ) -> None:
        super().__init__(uri, shape, dtype, (1, shape[1], shape[2]))
        self.store = store
        self.names = names

    def slice_at(self, z: int, ys: slice) -> NDArray[Any]:
        """Rows ``ys`` of slice ``z``; a slice that changed since ``open`` is bad input, too."""
        key = self.names[z]
        uri = self.store.uri_for(key)
        fh = ObjectFile(self.store, key, block=HEADER_BLOCK)
        try:
            with _tiff(fh) as tif:
                page = tif.pages.first
                if page.shape != self.shape[1:] or page.dtype != self.dtype:
                    raise InvalidInput(
                        f"{uri}: slice {z} is {page.shape} {page.dtype}, the stack "
                        f"{self.shape[1:]} {self.dtype}"
                    )
                return _rows(fh, page, tif.byteorder, ys)
        except VoxfleetError:
            raise
        except Exception as exc:
            raise _failed(fh, uri, exc) from None

    def read(self, box: Region) -> NDArray[Any]:
        zs, ys, xs = box
        out = np.empty((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            out[i] = self.slice_at(z, ys)[:, xs]
        return out

    def read_boxes(self, boxes: list[Region]) -> list[NDArray[Any]]:
        # Boxes side by side in y and x share their slices: read each slice once for all.
        out = [np.empty(tuple(s.stop - s.start for s in box), self.dtype) for box in boxes]
        for z in sorted({z for box in boxes for z in range(box[0].start, box[0].stop)}):
            crossing = [
                (b, part) for b, part in zip(boxes, out, strict=True) if b[0].start <= z < b[0].stop
            ]
            top = min(b[1].start for b, _ in crossing)
            rows = self.slice_at(z, slice(top, max(b[1].stop for b, _ in crossing)))
            for box, part in crossing:
                part[z - box[0].start] = rows[box[1].start - top : box[1].stop - top, box[2]]
        return out


class TiffPages(Source):
    """The pages of one multi-page TIFF; the file is opened once per process, on first use."""

    def __init__(
        self, uri: str, store: ObjectStore, key: str, shape: tuple[int, int, int], dtype: Any
    ) -> None:
        super().__init__(uri, shape, dtype, (1, shape[1], shape[2]))
        self.store = store
        self.key = key
        self._file: ObjectFile | None = None
        self._tif: Any = None

    def read(self, box: Region) -> NDArray[Any]:
        zs, ys, xs = box
        out = np.empty((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), self.dtype)
        with self._lock:  # one file handle, and tifffile's page list is not thread-safe
            try:
                if self._tif is None or self._file is None:
                    self._file = ObjectFile(self.store, self.key, block=HEADER_BLOCK)
                    self._tif = _tiff(self._file)
                fh, pages = self._file, self._tif.series[0].pages
                for i, z in enumerate(range(zs.start, zs.stop)):
                    out[i] = _rows(fh, pages[z], self._tif.byteorder, ys)[:, xs]
            except VoxfleetError:
                raise
            except Exception as exc:
                fh = self._file or ObjectFile(self.store, self.key, block=HEADER_BLOCK)
                self._tif = None  # a half-read file is opened again next time
                raise _failed(fh, self.uri, exc) from None
        return out


def _open_file(store: ObjectStore, key: str) -> Opened:
    uri = store.uri_for(key)
    fh = ObjectFile(store, key, block=HEADER_BLOCK)
    try:
        with _tiff(fh) as tif:
            series = tif.series
            first = series[0]
            shape, axes, n_pages = tuple(first.shape), str(first.axes), len(first.pages)
            dtype = first.dtype
            _decodable(tif.pages.first, uri)
            shapes = [tuple(s.shape) for s in series]
    except VoxfleetError:
        raise
    except Exception as exc:
        raise _failed(fh, uri, exc) from None
    if len(shapes) > 1:
        raise InvalidInput(f"{uri}: pages of different shapes or dtypes (images {shapes[:4]})")
    if len(shape) == 2:
        raise InvalidInput(f"{uri}: a single 2D image {shape}, not a volume")
    if "S" in axes:
        raise InvalidInput(f"{uri}: colour or multi-sample pages ({axes}); need grey values")
    shape3 = three_d(uri, shape)
    if n_pages != shape3[0]:
        raise InvalidInput(f"{uri}: {n_pages} pages for {shape3[0]} slices; need a page a slice")
    source = TiffPages(uri, store, key, shape3, numeric_dtype(uri, dtype))
    return Opened(source, "tiff", detail={"pages": shape3[0]})


def _open_stack(store: ObjectStore, uri: str, names: list[str]) -> Opened:
    shape0, dtype0, pages0 = _header(store, names[0])  # first: it makes the S3 client
    with ThreadPoolExecutor(max_workers=LOOK_THREADS) as pool:
        headers = [(shape0, dtype0, pages0), *pool.map(lambda n: _header(store, n), names[1:])]
    for name, (shape, dtype, pages) in zip(names, headers, strict=True):
        if pages != 1:
            raise InvalidInput(
                f"{uri}: {name} holds {pages} pages; a stack needs one 2D image per file"
            )
        if len(shape) != 2:
            raise InvalidInput(f"{uri}: {name} is {shape}, not a 2D grey-value slice")
        if (shape, dtype) != (shape0, dtype0):
            raise InvalidInput(
                f"{uri}: slices differ: {name} is {shape} {dtype}, {names[0]} {shape0} {dtype0}"
            )
    shape = (len(names), shape0[0], shape0[1])
    source = TiffStack(uri, store, names, shape, numeric_dtype(uri, dtype0))
    return Opened(source, "tiff stack", detail={"slices": len(names), "first": names[0]})


class TiffReader(Reader):
    format = "TIFF"

    def detect(self, probe: Probe) -> bool:
        return is_tiff(probe.name) if probe.is_file else any(is_tiff(n) for n in probe.files())

    def open(self, probe: Probe, selection: Selection) -> Opened:
        if probe.is_file:
            return _open_file(*probe.as_object())
        names = [n for n in probe.files() if is_tiff(n)]
        if len(names) == 1:
            return _open_file(probe.inputs, names[0])
        series, plain = tiff_series(names)
        if len(series) != 1 or plain:
            shown = ", ".join([s.pattern for s in series] + plain)
            raise InvalidInput(
                f"{probe.uri}: TIFF files that are not one stack ({shown}); give each stack a "
                "folder of its own, or name a multi-page file"
            )
        problem = series[0].problem()
        if problem:
            raise InvalidInput(f"{probe.uri}: {problem}")
        return _open_stack(probe.inputs, probe.uri, list(series[0].names))
