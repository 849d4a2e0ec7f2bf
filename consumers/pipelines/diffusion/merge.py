"""One tractogram per subject: the shards concatenated into ``tractogram.trx``, kept beside them.

The shards stay for parallel readers (``bundles`` reads them at once); a viewer, a lab's own
script or a BIDS-Derivatives export wants one file. TRX is a zip (stored, not compressed) of a
``header.json``, the points of every streamline end to end (``positions.3.float32``) and where
each streamline starts (``offsets.uint64``, one more than there are streamlines, the last one
the number of points: the layout trx-python writes). So the merge streams: each shard is
downloaded, read, and its points written straight into the zip's positions member, then
dropped; only the streamline lengths (8 B a streamline) are kept for the offsets. The
streamlines pass through memory once, one shard at a time. ``trx.trx_file_memmap.save`` would
copy the whole tractogram twice more (its deepcopy, then the zip).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from shared.store import ObjectInfo, ObjectStore

TRACTOGRAM = "tractogram.trx"


@dataclass(frozen=True)
class Merged:
    info: ObjectInfo
    streamlines: int
    points: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.info.key,
            "streamlines": self.streamlines,
            "points": self.points,
            "bytes": self.info.bytes,
        }


def _shard_points(path: Path) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A shard's points in RAS+ mm, in streamline order, and each streamline's point count
    (``.trk`` through nibabel, ``.trx`` through trx-python)."""
    trx = None
    if path.suffix == ".trx":
        from trx.trx_file_memmap import load

        trx = load(str(path))
        sequence = trx.streamlines
    else:
        sequence = nib.streamlines.load(str(path)).streamlines
    try:
        # Copies: a trx file's memory map goes with close().
        points = np.ascontiguousarray(sequence.get_data(), dtype="<f4")
        return points, np.asarray(sequence._lengths, dtype=np.int64)
    finally:
        if trx is not None:
            trx.close()


def merge_shards(
    out: ObjectStore, keys: list[str], affine: NDArray[np.float64], shape: tuple[int, int, int]
) -> Merged:
    """Concatenate the shards at ``keys`` (in that order) into ``tractogram.trx`` in ``out``:
    streamline ``i`` of the result is streamline ``i`` of the shards' union, in shard order."""
    lengths: list[NDArray[np.int64]] = []
    with tempfile.TemporaryDirectory(prefix="voxfleet-merge-") as tmp:
        target = Path(tmp) / TRACTOGRAM
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("positions.3.float32", "w", force_zip64=True) as positions:
                for key in keys:
                    shard = out.get_file(key, Path(tmp) / Path(key).name)
                    points, counts = _shard_points(shard)
                    shard.unlink()
                    positions.write(points.tobytes())
                    lengths.append(counts)
                    del points
            every = np.concatenate(lengths) if lengths else np.empty(0, np.int64)
            offsets = np.concatenate([[0], np.cumsum(every)]).astype("<u8")
            zf.writestr("offsets.uint64", offsets.tobytes())
            header = {
                "DIMENSIONS": [int(n) for n in shape],
                "VOXEL_TO_RASMM": np.asarray(affine, dtype=np.float64).tolist(),
                "NB_VERTICES": int(offsets[-1]),
                "NB_STREAMLINES": int(every.size),
            }
            zf.writestr("header.json", json.dumps(header))
        info = out.put_file(TRACTOGRAM, target)
    return Merged(info, int(every.size), int(offsets[-1]))
