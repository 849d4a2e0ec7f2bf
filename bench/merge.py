"""The merge of a tractography job's shards into one ``tractogram.trx`` vs trx-python's own way,
on HCP-size shards, and what the merge adds to the HCP-size tractography job.

The shards: 8 ``.trk`` files holding the streamline count of the HCP-size tractography
benchmark's job (``bench/results/tractography.json``: ~523k), lengths drawn between the job's
``min_len`` and ``max_len`` at its 0.5 mm step (lognormal, median ~50 mm: ~100 points), random
walks on the HCP grid (145x174x145 at 1.25 mm). Written once, cached in a temp folder.

- ours: ``consumers.pipelines.diffusion.merge.merge_shards`` (each shard read and its points
  streamed into the TRX zip, one shard in memory at a time);
- trx-python: each shard loaded with dipy's ``load_tractogram``, ``TrxFile.from_sft``, then
  ``trx_file_memmap.concatenate`` and ``save`` (what its docs show).

Each runs in a fresh process (its imports count); CPU seconds, wall and the peak PSS of the
process are measured around it. ``share_of_hcp_job`` is our merge's wall time over that job's
(the target: at most 5 %): the job's own figure from its results file, as the merge runs
after tracking, on the consumer, while the cluster is released.

``python -m bench merge [--streamlines=N]``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import RESULTS, measure, write_results

SHAPE = (145, 174, 145)
ZOOM = 1.25
SHARDS = 8
STEP_MM = 0.5
CACHE = Path(tempfile.gettempdir()) / "voxfleet-bench-merge"


def _affine() -> np.ndarray:
    affine = np.diag([ZOOM, ZOOM, ZOOM, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    return affine


def _write_shards(folder: Path, streamlines: int, seed: int = 5) -> list[str]:
    from dipy.io.stateful_tractogram import StatefulTractogram
    from dipy.io.streamline import save_tractogram
    from dipy.io.utils import Space

    from consumers.pipelines.diffusion.tracking import reference_header

    header = reference_header(_affine(), SHAPE, (ZOOM, ZOOM, ZOOM))
    rng = np.random.default_rng(seed)
    lo = np.array([-90.0, -126.0, -72.0]) + 1
    hi = lo + np.array(SHAPE) * ZOOM - 3
    keys = []
    for i, count in enumerate(np.diff(np.linspace(0, streamlines, SHARDS + 1).astype(int))):
        lengths = np.clip(rng.lognormal(np.log(100), 0.6, count), 20, 500).astype(int)
        steps = rng.normal(size=(int(lengths.sum()), 3)).astype(np.float32)
        steps *= STEP_MM / np.linalg.norm(steps, axis=1, keepdims=True)
        starts = np.repeat(rng.uniform(lo, hi, (count, 3)).astype(np.float32), lengths, axis=0)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        walk = np.cumsum(steps, axis=0)
        walk -= np.repeat(walk[offsets], lengths, axis=0)  # each walk starts at its seed
        points = np.clip(starts + walk, lo, hi)
        lines = np.split(points, np.cumsum(lengths)[:-1])
        key = f"shards/sl-{i:04d}.trk"
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tractogram(StatefulTractogram(lines, header, Space.RASMM), str(path))
        keys.append(key)
    return keys


def ours(folder: str, keys: list[str]) -> None:
    from consumers.pipelines.diffusion.merge import merge_shards
    from shared.store import LocalStore

    merged = merge_shards(LocalStore(Path(folder)), keys, _affine(), SHAPE)
    print(json.dumps({"streamlines": merged.streamlines, "points": merged.points}))


def trx_python(folder: str, keys: list[str]) -> None:
    import nibabel as nib
    from dipy.io.streamline import load_tractogram
    from trx.trx_file_memmap import TrxFile, concatenate, save

    reference = nib.Nifti1Image(np.zeros(SHAPE, np.uint8), _affine())
    parts = [
        TrxFile.from_sft(load_tractogram(str(Path(folder) / k), reference, bbox_valid_check=False))
        for k in keys
    ]
    merged = concatenate(parts, preallocation=False)
    save(merged, str(Path(folder) / "reference.trx"))
    print(json.dumps({"streamlines": len(merged.streamlines)}))


def _run(name: str, folder: Path, keys: list[str]) -> dict[str, Any]:
    code = f"from bench.merge import {name}; {name}({str(folder)!r}, {keys!r})"
    with measure() as m:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
    return {**m.as_dict(), **json.loads(done.stdout.strip().splitlines()[-1])}


def main(options: list[str]) -> dict[str, Any]:
    job = json.loads((RESULTS / "tractography.json").read_text())
    default = int(job["streamlines"])
    given = next((o.split("=", 1)[1] for o in options if o.startswith("--streamlines=")), None)
    streamlines = int(given) if given else default
    folder = CACHE / str(streamlines)
    keys = [f"shards/sl-{i:04d}.trk" for i in range(SHARDS)]
    if not all((folder / k).is_file() for k in keys):
        keys = _write_shards(folder, streamlines)
    shard_mib = sum((folder / k).stat().st_size for k in keys) / 2**20
    print(f"merge: {streamlines} streamlines in {SHARDS} shards ({shard_mib:.0f} MiB)", flush=True)
    mine = _run("ours", folder, keys)
    theirs = _run("trx_python", folder, keys)
    assert mine["streamlines"] == theirs["streamlines"] == streamlines
    figures = {
        "streamlines": streamlines,
        "points": mine["points"],
        "shards_mib": round(shard_mib, 1),
        "ours": mine,
        "trx_python": theirs,
        "cpu_ratio_vs_trx_python": round(theirs["cpu_s"] / mine["cpu_s"], 3),
        "peak_ratio_vs_trx_python": round(theirs["peak_pss_mib"] / mine["peak_pss_mib"], 3),
        "hcp_job_wall_s": job["ours"]["wall_s"],
        "share_of_hcp_job": round(mine["wall_s"] / float(job["ours"]["wall_s"]), 4),
    }
    write_results("merge", figures)
    return figures
