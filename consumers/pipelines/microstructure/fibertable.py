"""The per-fiber table, ``fibers.csv``: one row per fiber of the label image (row k: label k),
from the fibers' merged moments (``fiberstats.geometry``), in the volume's physical units.

CSV rather than Parquet: pyarrow is not among the dependencies, and a few columns per fiber
need no columnar format. The units are in ``stats.json`` beside it (``fiber_table``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.microstructure.fiberstats import geometry

FILE = "fibers.csv"
# name: meaning (written to stats.json with the unit)
COLUMNS = {
    "label": "the fiber's value in the label image (1..N)",
    "voxels": "voxel count",
    "volume": "voxels x voxel volume (unit^3)",
    "centroid_z": "centre of mass (unit; voxel i's centre at i x voxel size, as in the OME-Zarr)",
    "centroid_y": "as centroid_z",
    "centroid_x": "as centroid_z",
    "direction_z": "principal axis of the voxels, unit vector with z >= 0",
    "direction_y": "as direction_z",
    "direction_x": "as direction_z",
    "length": "sqrt(12 x variance along the axis), voxels as boxes (unit): a cylinder's length",
    "diameter": "2 sqrt(volume / (pi length)): the cylinder of that volume and length (unit)",
    "elongation": "sqrt(largest / middle variance): under 2, the direction means little",
}
VIEWER_COLUMNS = ("voxels", "length", "diameter")


def table(moments: NDArray[np.float64], voxel_size: tuple[float, float, float]) -> NDArray[Any]:
    """Rows in ``COLUMNS`` order from the fibers' moments (row k = label k + 1)."""
    if moments.shape[0] == 0:
        return np.empty((0, len(COLUMNS)))
    shape = geometry(moments, voxel_size)
    volume = shape.voxels * math.prod(voxel_size)
    diameter = 2 * np.sqrt(volume / (np.pi * shape.length))
    labels = np.arange(1, moments.shape[0] + 1, dtype=np.float64)
    return np.column_stack(
        [
            labels,
            shape.voxels,
            volume,
            shape.centroid,
            shape.direction,
            shape.length,
            diameter,
            shape.elongation,
        ]
    )


def write(path: Path, rows: NDArray[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Counts as integers; nine significant digits keep float32-level detail in the rest.
    formats = ["%d", "%d", *["%.9g"] * (len(COLUMNS) - 2)]
    np.savetxt(path, rows, fmt=formats, delimiter=",", header=",".join(COLUMNS), comments="")
    return path


def properties(rows: NDArray[Any]) -> list[dict[str, Any]]:
    """What a viewer shows beside each fiber (the label image's ``properties``)."""
    names = list(COLUMNS)
    shown = [names.index(name) for name in VIEWER_COLUMNS]
    return [
        {
            "label-value": int(row[0]),
            **{n: round(float(row[i]), 4) for n, i in zip(VIEWER_COLUMNS, shown, strict=True)},
        }
        for row in rows
    ]


def describe(rows: NDArray[Any], unit: str | None) -> dict[str, Any]:
    """What ``stats.json`` says of the table."""
    return {
        "file": FILE,
        "rows": int(rows.shape[0]),
        "unit": unit,
        "columns": COLUMNS,
    }
