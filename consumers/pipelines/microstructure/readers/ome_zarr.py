"""OME-Zarr (NGFF) multiscale images: 0.4 (Zarr v2, ``multiscales`` in ``.zattrs``) and 0.5
(Zarr v3, ``attributes.ome.multiscales`` in ``zarr.json``). Level 0 by default, ``level=N``.

The voxel size is the level's ``scale`` on the three space axes times the multiscale's own
``scale`` where it has one, in the space axes' unit. Every level is checked, not only the one
read, because a pyramid whose levels disagree is a writer's bug that has usually corrupted more
than its metadata: a missing dataset path, a level whose scale is finer than the one before, or
whose shape is not the one before it downsampled by their scale ratio. Axes other than space
(time, channel) must have one element: the pipeline segments one 3D volume.
"""

from __future__ import annotations

import math
from typing import Any

from consumers.pipelines.microstructure.readers.base import Opened, Probe, Reader, Selection
from consumers.pipelines.microstructure.readers.zarr_array import (
    ZarrFormat,
    ZarrSource,
    open_zarr_array,
    zarr_kind,
)
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.errors import InvalidInput

VERSIONS = {2: "0.4", 3: "0.5"}  # the NGFF version each Zarr format carries


def _multiscales(probe: Probe) -> tuple[ZarrFormat, dict[str, Any], str] | None:
    """(Zarr format, the first multiscale, its NGFF version) of an OME-Zarr image's root."""
    kind = zarr_kind(probe)
    if kind is None or kind[1] != "group":
        return None
    zarr_format = kind[0]
    if zarr_format == 3:
        attrs = ((probe.json("zarr.json") or {}).get("attributes") or {}).get("ome") or {}
        version = str(attrs.get("version", ""))
    else:
        attrs = probe.json(".zattrs") or {}
        version = ""
    found = attrs.get("multiscales")
    if not isinstance(found, list) or not found:
        return None
    first = found[0]
    if not isinstance(first, dict):
        raise InvalidInput(f"{probe.uri}: OME-Zarr multiscales[0] is not an object")
    version = version or str(first.get("version", ""))
    return zarr_format, first, version


def _scale(transforms: Any, n_axes: int, where: str, uri: str) -> list[float]:
    """The ``scale`` of a list of coordinate transformations (1 per axis where it has none)."""
    if transforms is None:
        return [1.0] * n_axes
    if not isinstance(transforms, list):
        raise InvalidInput(f"{uri}: {where} has invalid coordinateTransformations")
    scales = [t for t in transforms if isinstance(t, dict) and t.get("type") == "scale"]
    if len(scales) > 1:
        raise InvalidInput(f"{uri}: {where} has {len(scales)} scale transformations")
    if not scales:
        return [1.0] * n_axes
    value = scales[0].get("scale")
    if not isinstance(value, list) or len(value) != n_axes:
        raise InvalidInput(f"{uri}: {where}'s scale must list {n_axes} numbers, got {value!r}")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n_axes or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise InvalidInput(f"{uri}: {where}'s scale must be positive numbers, got {value!r}")
    return numbers


def _axes(multiscale: dict[str, Any], uri: str) -> tuple[list[str], list[int], str | None]:
    """(axis names, the indices of the three space axes, their unit)."""
    axes = multiscale.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, dict) and "name" in a for a in axes):
        raise InvalidInput(f"{uri}: OME-Zarr multiscales has no valid 'axes' (NGFF 0.4+)")
    names = [str(a["name"]) for a in axes]
    space = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    if len(space) != 3 or space != list(range(len(axes) - 3, len(axes))):
        raise InvalidInput(
            f"{uri}: OME-Zarr axes {''.join(names)} do not end in 3 space axes (a 3D volume)"
        )
    units = {axes[i].get("unit") for i in space}
    if len(units) > 1:
        shown = ", ".join(f"{axes[i]['name']}={axes[i].get('unit')}" for i in space)
        raise InvalidInput(f"{uri}: OME-Zarr space axes have different units ({shown})")
    unit = units.pop()
    return names, space, unit if isinstance(unit, str) and unit else None


def _check_levels(
    uri: str, paths: list[str], shapes: list[tuple[int, ...]], scales: list[list[float]]
) -> None:
    """Each level is the one before it, downsampled by the ratio of their scales."""
    for i in range(1, len(paths)):
        ratios = [b / a for a, b in zip(scales[i - 1], scales[i], strict=True)]
        where = f"{uri}: OME-Zarr levels disagree: level {i} ({paths[i]})"
        if any(r < 1 - 1e-6 for r in ratios):
            raise InvalidInput(
                f"{where} has scale {scales[i]}, finer than level {i - 1}'s {scales[i - 1]}"
            )
        expected = [n / r for n, r in zip(shapes[i - 1], ratios, strict=True)]
        if len(shapes[i]) != len(expected) or any(
            abs(n - e) >= 1 for n, e in zip(shapes[i], expected, strict=True)
        ):
            shown = [round(e, 2) for e in expected]
            raise InvalidInput(
                f"{where} has shape {shapes[i]}, not level {i - 1}'s {shapes[i - 1]} "
                f"downsampled by the scale ratio {[round(r, 4) for r in ratios]} ({shown})"
            )


class OmeZarrReader(Reader):
    format = "OME-Zarr"
    selects = frozenset({"level"})

    def detect(self, probe: Probe) -> bool:
        return _multiscales(probe) is not None

    def open(self, probe: Probe, selection: Selection) -> Opened:
        found = _multiscales(probe)
        assert found is not None
        zarr_format, multiscale, version = found
        uri = probe.uri
        if version and version not in VERSIONS.values():
            raise InvalidInput(f"{uri}: OME-Zarr {version} is not read here (0.4 or 0.5)")
        version = version or VERSIONS[zarr_format]
        names, space, unit = _axes(multiscale, uri)
        datasets = multiscale.get("datasets")
        if not isinstance(datasets, list) or not datasets:
            raise InvalidInput(f"{uri}: OME-Zarr multiscales lists no datasets")
        if selection.level >= len(datasets):
            raise InvalidInput(
                f"{uri}: no level {selection.level} (the image has {len(datasets)}: "
                f"0..{len(datasets) - 1})"
            )
        store = ObjectZarrStore(probe.inputs, read_only=True)
        paths: list[str] = []
        arrays: list[Any] = []
        scales: list[list[float]] = []
        for i, entry in enumerate(datasets):
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or not path:
                raise InvalidInput(f"{uri}: OME-Zarr levels disagree: level {i} has no path")
            if not store.objects.exists(f"{path}/{'zarr.json' if zarr_format == 3 else '.zarray'}"):
                raise InvalidInput(
                    f"{uri}: OME-Zarr levels disagree: level {i}'s dataset {path!r} is missing"
                )
            array = open_zarr_array(store, path, zarr_format, f"{uri}/{path}")
            if array.ndim != len(names):
                raise InvalidInput(
                    f"{uri}/{path}: {array.ndim}D array for the {len(names)} axes {''.join(names)}"
                )
            paths.append(path)
            arrays.append(array)
            scales.append(
                _scale(entry.get("coordinateTransformations"), len(names), f"level {i}", uri)
            )
        _check_levels(uri, paths, [tuple(a.shape) for a in arrays], scales)
        top = _scale(multiscale.get("coordinateTransformations"), len(names), "multiscale", uri)
        chosen = arrays[selection.level]
        lead = tuple(i for i in range(len(names)) if i not in space)
        extra = {names[i]: int(chosen.shape[i]) for i in lead if chosen.shape[i] != 1}
        if extra:
            shown = ", ".join(f"{k}={v}" for k, v in extra.items())
            raise InvalidInput(f"{uri}: a volume per {shown}; the pipeline reads one 3D volume")
        path = paths[selection.level]
        source = ZarrSource(f"{uri}/{path}", chosen, store, path, zarr_format, (0,) * len(lead))
        scale = [scales[selection.level][i] * top[i] for i in space]
        return Opened(
            source,
            f"ome-zarr {version}",
            (scale[0], scale[1], scale[2]),
            unit,
            {"level": selection.level, "path": path, "levels": len(paths)},
        )
