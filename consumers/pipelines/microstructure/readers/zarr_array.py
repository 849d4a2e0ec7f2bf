"""Zarr v2 and v3 arrays, bare or inside a group (an xarray dataset is a Zarr v2 group whose
arrays name their axes in ``_ARRAY_DIMENSIONS``): ``array=NAME`` picks one where a group has
several 3D arrays, the only one is taken where there is one.

Metadata is checked as JSON first (a reason the user can act on beats zarr's traceback), then
zarr opens the array through ``ObjectZarrStore``; voxel size comes from voxfleet's own
``voxel_size``/``unit`` attributes, where the array has them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import zarr
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
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.errors import InvalidInput, VoxfleetError

SHOWN = 6  # candidate arrays named in a message
ZarrFormat = Literal[2, 3]


def _corrupt(uri: str, what: str, exc: Exception) -> InvalidInput:
    return InvalidInput(f"corrupt {what} at {uri}: {type(exc).__name__}: {exc}")


def open_zarr_array(store: ObjectZarrStore, path: str, zarr_format: ZarrFormat, uri: str) -> Any:
    """zarr's array at ``path``, its failures as one line (zarr raises many types for bad
    metadata; all mean "corrupt")."""
    what = "zarr.json" if zarr_format == 3 else "Zarr v2 metadata (.zarray)"
    try:
        return zarr.open_array(store, path=path, mode="r", zarr_format=zarr_format)
    except VoxfleetError:
        raise  # the store's own: retried (transient) or failed (permanent) as such
    except Exception as exc:
        raise _corrupt(uri, what, exc) from None


class ZarrSource(Source):
    """A Zarr array's (z, y, x) voxels; ``lead`` indexes the leading axes of size 1 that an
    OME-Zarr image may have (time, channel)."""

    def __init__(
        self,
        uri: str,
        array: Any,
        store: ObjectZarrStore,
        path: str,
        zarr_format: ZarrFormat,
        lead: tuple[int, ...] = (),
    ) -> None:
        shape = three_d(uri, tuple(array.shape[len(lead) :]))
        super().__init__(uri, shape, numeric_dtype(uri, array.dtype), array.chunks[len(lead) :])
        self.store = store
        self.path = path
        self.zarr_format = zarr_format
        self.lead = lead
        self._array: Any = array

    def _opened(self) -> Any:
        with self._lock:
            if self._array is None:
                self._array = open_zarr_array(self.store, self.path, self.zarr_format, self.uri)
            return self._array

    def read(self, box: Region) -> NDArray[Any]:
        return np.asarray(self._opened()[(*self.lead, *box)])


def _v3_metadata(probe: Probe) -> dict[str, Any] | None:
    meta = probe.json("zarr.json")
    if meta is None:
        return None
    if meta.get("zarr_format") != 3:
        raise InvalidInput(f"zarr.json at {probe.uri} is not Zarr v3 metadata")
    if meta.get("node_type") not in ("array", "group"):
        raise InvalidInput(f"zarr.json at {probe.uri} describes no array")
    return meta


def _v2_kind(probe: Probe) -> str | None:
    for key, kind in ((".zarray", "array"), (".zgroup", "group")):
        meta = probe.json(key)
        if meta is not None:
            if meta.get("zarr_format") != 2:
                raise InvalidInput(
                    f"{key} at {probe.uri} is not Zarr v2 metadata "
                    f"(zarr_format {meta.get('zarr_format')!r})"
                )
            return kind
    return None


def zarr_kind(probe: Probe) -> tuple[ZarrFormat, str] | None:
    """(Zarr format, "array" or "group") of the input's root, None if it is no Zarr node."""
    meta = _v3_metadata(probe)
    if meta is not None:
        return 3, str(meta["node_type"])
    kind = _v2_kind(probe)
    return (2, kind) if kind is not None else None


def _describe(name: str, node: Any) -> str:
    if isinstance(node, zarr.Array):
        return f"{name} ({node.ndim}D)"
    return f"{name} (group)"


class ZarrArrayReader(Reader):
    format = "Zarr"
    selects = frozenset({"array"})

    def detect(self, probe: Probe) -> bool:
        return zarr_kind(probe) is not None

    def open(self, probe: Probe, selection: Selection) -> Opened:
        found = zarr_kind(probe)
        assert found is not None
        zarr_format, kind = found
        store = ObjectZarrStore(probe.inputs, read_only=True)
        if kind == "array":
            if selection.array is not None:
                raise InvalidInput(
                    f"{probe.uri} is a Zarr array, not a group: array={selection.array} names "
                    "nothing in it"
                )
            path = ""
        else:
            path = self._pick(probe, store, zarr_format, selection.array)
        array = open_zarr_array(store, path, zarr_format, probe.uri)
        uri = f"{probe.uri}/{path}" if path else probe.uri
        source = ZarrSource(uri, array, store, path, zarr_format)
        sizes, unit = attribute_voxel_size(dict(array.attrs), uri)
        detail = {"array": path} if path else {}
        return Opened(source, f"zarr v{zarr_format}", sizes, unit, detail)

    def _pick(
        self, probe: Probe, store: ObjectZarrStore, zarr_format: ZarrFormat, name: str | None
    ) -> str:
        try:
            group = zarr.open_group(store, mode="r", zarr_format=zarr_format)
            if name is not None:
                node = group.get(name)
                members = [] if node is not None else list(group.members(max_depth=None))
            else:
                members = list(group.members(max_depth=None))
        except VoxfleetError:
            raise
        except Exception as exc:
            raise _corrupt(probe.uri, "Zarr group metadata", exc) from None
        volumes = [n for n, node in members if isinstance(node, zarr.Array) and node.ndim == 3]
        if name is not None:
            if node is None:
                have = ", ".join(volumes[:SHOWN]) or "none"
                raise InvalidInput(
                    f"{probe.uri}: no array {name!r} in the group (3D arrays: {have})"
                )
            if not isinstance(node, zarr.Array):
                raise InvalidInput(f"{probe.uri}: {name!r} is a group, not an array")
            return name
        if len(volumes) == 1:
            return volumes[0]
        if not volumes:
            arrays = ", ".join(_describe(n, node) for n, node in members[:SHOWN]) or "it is empty"
            raise InvalidInput(
                f"{probe.uri} is a Zarr group, not an array, and holds no 3D array ({arrays})"
            )
        shown = ", ".join(volumes[:SHOWN]) + (" ..." if len(volumes) > SHOWN else "")
        raise InvalidInput(
            f"{probe.uri}: a Zarr group with {len(volumes)} 3D arrays ({shown}); "
            "name one with --param array=NAME"
        )
