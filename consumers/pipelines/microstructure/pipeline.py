"""The ``microstructure`` pipeline: fiber segmentation of an X-ray micro-CT volume (Zarr).

``load`` (while the cluster starts) validates the array and reads a small sample of it for the
objectness ``gamma``. ``run``: ITK objectness chunk by chunk (``overlap`` with the halo the
recursive Gaussian needs, chunks chosen so the halo costs little), each chunk written straight
to the output's image as level 0; one global threshold (Otsu on a strided sample the same
tasks return); connected components across chunks from the stored objectness (``components``:
two passes, a block a task); fiber statistics from per-block moments; the fibers' label image
(``relabel``: components under ``min_fiber_voxels`` become background, the fibers 1..N);
then the coarser levels of both, each from the stored level before it; ``stats.json``, the
per-fiber table ``fibers.csv`` and a QC PNG. No step holds the volume, or any whole map of it,
in the cluster's memory or the consumer's: a volume larger than all the workers' memory
together runs in the memory of one task per worker.

Non-finite voxels (NaN, inf) fail the job (``InvalidInput``): the sample catches most at load,
every chunk checks its own. Replacing them would bend the Hessian for sigmas around each one.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import ome_zarr.writer  # noqa: F401 - for ngff's metadata, here: the workers never import it
import zarr
from dask.delayed import delayed

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.fanout import Measured, collect, record_tasks, worker_count
from consumers.pipelines.microstructure import (
    components,
    fiberstats,
    fibertable,
    ngff,
    qc,
    relabel,
)
from consumers.pipelines.microstructure.blocks import objectness_block
from consumers.pipelines.microstructure.chunking import ChunkPlan, plan_chunks, task_voxel_budget
from consumers.pipelines.microstructure.objectness import ObjectnessSpec
from consumers.pipelines.microstructure.readers.base import Selection
from consumers.pipelines.microstructure.volume import Volume, open_volume
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared import provenance
from shared.errors import InvalidInput
from shared.params import MicrostructureParams
from shared.store import ObjectInfo

#: Imported on every worker while the cluster starts. ``objectness_itk`` loads ITK's wrappers
#: and sets one ITK thread per worker process.
WORKER_MODULES = (
    "consumers.pipelines.microstructure.objectness_itk",
    "consumers.pipelines.microstructure.blocks",
    "consumers.pipelines.microstructure.ngff",
    "consumers.pipelines.microstructure.fiberstats",
    "consumers.pipelines.microstructure.components",
)

OUTPUT = "fibers.ome.zarr"
LABEL_NAME = "fibers"
OTSU_SAMPLE_VOXELS = 2_000_000  # a strided sample of the objectness this big, at most


@dataclass
class Loaded:
    volume: Volume
    spec: ObjectnessSpec
    gamma: dict[str, Any]


def _fits(shape: tuple[int, int, int], params: MicrostructureParams) -> None:
    # ITK's recursive Gaussian (and ours, which is its transcription) needs 4 samples a line.
    if min(shape) < 4:
        raise InvalidInput(f"a volume of {shape} is too small: every side needs 4 voxels or more")
    if 4 * max(params.sigmas) > min(shape):
        raise InvalidInput(
            f"sigma {max(params.sigmas):g} is too large for a volume of {shape}: "
            f"the smallest side must be at least 4 sigma ({4 * max(params.sigmas):g})"
        )


def check(ctx: PipelineContext) -> None:
    """Before any cluster starts: a 3D volume of numbers within the limits, in a format the
    readers know (its metadata and every TIFF slice's header only), large enough for the
    largest sigma."""
    params = ctx.params(MicrostructureParams)
    volume = open_volume(
        ctx.inputs,
        ctx.settings,
        voxel_size=params.voxel_size,
        sample=False,
        selection=Selection.of(params),
    )
    _fits(volume.shape, params)


def load(ctx: PipelineContext) -> Loaded:
    """Open and validate the volume, and fix gamma; runs before any cluster exists."""
    params = ctx.params(MicrostructureParams)
    with ctx.timer.stage("load"):
        volume = open_volume(
            ctx.inputs, ctx.settings, voxel_size=params.voxel_size, selection=Selection.of(params)
        )
        _fits(volume.shape, params)
        if params.gamma is not None:
            gamma: dict[str, Any] = {"value": params.gamma, "method": "given"}
        else:
            noise = fiberstats.noise_sigma(volume.sample)
            # Noiseless data (a MAD of 0) still needs a positive gamma: a thousandth of the
            # sample's range, or 1 for a flat sample (whose objectness is 0 anyway).
            spread = float(np.ptp(np.concatenate([b.ravel() for b in volume.sample]).astype(float)))
            value = params.gamma_noise * noise["noise"] or spread * 1e-3 or 1.0
            gamma = {
                "value": value,
                "method": f"{params.gamma_noise:g} x noise",
                "noise": round(noise["noise"], 6),
                "noise_per_axis": [round(v, 6) for v in noise["per_axis"]],
                "sample": volume.sample_location,
            }
    spec = ObjectnessSpec(
        sigmas=params.sigmas,
        alpha=params.alpha,
        beta=params.beta,
        gamma=float(gamma["value"]),
        bright=params.bright_fibers,
    )
    return Loaded(volume, spec, gamma)


def _memory_limit(client: Any) -> int | None:
    """The smallest worker's memory limit, if the workers have one."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    limits = [w.get("memory_limit") or 0 for w in workers.values()]
    return (min(limits) or None) if limits else None


def _cores(
    padded: tuple[tuple[int, ...], ...], halo: int, pad_faces: bool
) -> tuple[tuple[int, ...], ...]:
    """Block sizes without their halos (``overlap()`` may have merged small chunks first)."""
    return tuple(
        tuple(
            c
            - (halo if pad_faces or i > 0 else 0)
            - (halo if pad_faces or i < len(axis) - 1 else 0)
            for i, c in enumerate(axis)
        )
        for axis in padded
    )


def _filter(
    ctx: PipelineContext,
    loaded: Loaded,
    plan: ChunkPlan,
    target: zarr.Array[Any],
    stride: int | None,
    client: Any,
) -> tuple[list[ObjectInfo], np.ndarray]:
    """The objectness of the whole volume, chunk by chunk, each chunk written to the image's
    level 0 by the task that computed it; returns what was written and the voxels of the
    ``[::stride]`` grid (the Otsu sample)."""
    # The reader's lazy array: each task reads its own region straight from the store.
    source = da.from_array(
        loaded.volume.array, chunks=plan.dask_chunks, meta=np.empty((0, 0, 0), loaded.volume.dtype)
    )
    log = f"objectness-{uuid.uuid4()}"  # this job's task stats, on a cluster others may share
    with ctx.timer.stage("objectness"):
        # overlap + map_blocks rather than map_overlap: each task returns its chunk without
        # the halo, so the halo only feeds the Gaussian passes along its own axis (needed);
        # the other passes and the objectness never see it.
        padded = da.overlap.overlap(
            source, depth=plan.halo, boundary="reflect" if plan.boundary == "reflect" else "none"
        )
        pad_faces = plan.boundary == "reflect"
        lazy = padded.map_blocks(
            Measured(objectness_block, log),
            chunks=_cores(padded.chunks, plan.halo, pad_faces),
            dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32),
            spec=loaded.spec,
            halo=plan.halo,
            pad_faces=pad_faces,
            token="objectness",  # noqa: S106 - the key prefix; dask appends a hash
        )
        # A no-op unless overlap() merged chunks smaller than the halo: the writes need the
        # plan's chunks, whole multiples of the storage chunk.
        blocks = lazy.rechunk(plan.dask_chunks).to_delayed()
        tasks = [
            delayed(ngff.write_sampled)(blocks[idx], target, corner, stride)
            for idx, (corner, _) in zip(
                np.ndindex(*blocks.shape), components.block_regions(plan.dask_chunks), strict=True
            )
        ]
        done = client.gather(client.compute(tasks))
    record_tasks(ctx.timer, "objectness", collect(client, log))
    written = [info for infos, _ in done for info in infos]
    return written, np.concatenate([sample for _, sample in done])


def _sample_stride(shape: tuple[int, int, int], params: MicrostructureParams) -> int | None:
    if params.threshold != "otsu":
        return None
    side: float = (math.prod(shape) / OTSU_SAMPLE_VOXELS) ** (1 / 3)
    return max(1, math.ceil(side))


def _threshold(
    sample: np.ndarray, stride: int | None, params: MicrostructureParams
) -> dict[str, Any]:
    if stride is None:
        return {"value": float(params.threshold), "method": "given"}
    return {
        "value": fiberstats.otsu(sample, (0.0, 1.0)),
        "method": "otsu",
        "sample": {"origin": [0, 0, 0], "stride": [stride] * 3, "voxels": int(sample.size)},
    }


def _components(
    objectness: zarr.Array[Any], plan: ChunkPlan, threshold: float, min_voxels: int, client: Any
) -> components.Joined:
    """Pass one of ``components``: each block labelled and measured on the workers, the
    labels joined across faces in the consumer."""
    regions = components.block_regions(plan.dask_chunks)
    blocks = [
        delayed(components.measure, pure=False)(objectness, corner, shape, threshold, min_voxels)
        for corner, shape in regions
    ]
    pairs = components.neighbours(plan.grid)
    tasks = [delayed(components.summary)(block) for block in blocks] + [
        delayed(components.face_pairs)(blocks[i], blocks[j], axis) for i, j, axis in pairs
    ]
    done = client.gather(client.compute(tasks))
    found = [(i, j, done[len(blocks) + k]) for k, (i, j, _) in enumerate(pairs)]
    return components.join(done[: len(blocks)], found)


def _fibers(
    objectness: zarr.Array[Any],
    target: zarr.Array[Any],
    plan: ChunkPlan,
    threshold: float,
    min_voxels: int,
    lookups: list[np.ndarray],
    client: Any,
) -> list[ObjectInfo]:
    """Pass two of ``components``: the fibers' label image at level 0."""
    # Each block's lookup goes to the cluster once, not inside the graph (a label per
    # component at a block's faces, and every fiber: MBs on a large noisy volume).
    shared = client.scatter(lookups)
    tasks = [
        delayed(components.write_fibers)(
            objectness, target, corner, shape, threshold, min_voxels, lookup
        )
        for (corner, shape), lookup in zip(
            components.block_regions(plan.dask_chunks), shared, strict=True
        )
    ]
    return [info for part in client.gather(client.compute(tasks)) for info in part]


def _coarser_levels(
    arrays: list[zarr.Array[Any]],
    levels: list[ngff.Level],
    plan: ChunkPlan,
    how: str,
    client: Any,
) -> list[ObjectInfo]:
    """Levels 1.. of a multiscale, each from the stored level before it."""
    written: list[ObjectInfo] = []
    for k in range(1, len(levels)):
        tasks = [
            delayed(ngff.downsample_region)(
                arrays[k - 1], arrays[k], corner, shape, levels[k].step, how
            )
            for corner, shape in ngff.coarse_regions(levels[k], arrays[k].chunks, plan.chunks)
        ]
        written += [info for part in client.gather(client.compute(tasks)) for info in part]
    return written


def run(ctx: PipelineContext, loaded: Loaded, client: Any) -> PipelineResult:
    params = ctx.params(MicrostructureParams)
    volume = loaded.volume
    n_workers, memory = worker_count(client), _memory_limit(client)
    halo = params.halo if params.halo is not None else loaded.spec.halo
    plan = plan_chunks(
        volume.shape,
        halo,
        n_workers=n_workers,
        max_task_voxels=task_voxel_budget(memory),
        requested=params.chunk_shape,
        boundary=params.boundary,
    )
    store = ObjectZarrStore(ctx.out.child(OUTPUT))
    levels = ngff.pyramid(volume.shape, volume.voxel_size)
    where = ngff.Where(plan.storage, volume.voxel_size, volume.unit)
    root, image = ngff.create_image(store, levels, np.float32, "objectness", where)
    stride = _sample_stride(volume.shape, params)
    written, sample = _filter(ctx, loaded, plan, image[0], stride, client)
    with ctx.timer.stage("threshold"):
        threshold = _threshold(sample, stride, params)
    cut, min_voxels = float(threshold["value"]), params.min_fiber_voxels
    with ctx.timer.stage("label"):
        joined = _components(image[0], plan, cut, min_voxels, client)
    with ctx.timer.stage("stats"):
        stats = fiberstats.fiber_statistics(
            joined.moments,
            math.prod(volume.shape),
            min_fiber_voxels=min_voxels,
            voxel_size=volume.voxel_size,
            with_orientation=params.orientation,
            specks=joined.specks,
        )
        table = relabel.lookup(joined.moments, min_voxels)
        rows = fibertable.table(relabel.renumber(joined.moments, table), volume.voxel_size)
        stats["fiber_table"] = fibertable.describe(rows, volume.unit)
    labels = ngff.create_labels(
        root,
        levels,
        np.uint32,
        LABEL_NAME,
        where,
        count=len(rows),
        # Hover text for the viewers, when few enough for zarr.json (the table has it all).
        properties=fibertable.properties(rows[: ngff.MAX_DESCRIBED_LABELS]),
    )
    with ctx.timer.stage("relabel"):
        lookups = joined.lookups(table)
        written += _fibers(image[0], labels[0], plan, cut, min_voxels, lookups, client)
    with ctx.timer.stage("write"):
        written += _coarser_levels(image, levels, plan, "mean", client)
        written += _coarser_levels(labels, levels, plan, "nearest", client)
    metadata = store.take_written()  # the groups' and arrays' zarr.json, written here
    files = [
        ObjectInfo(f"{OUTPUT}/{info.key}", info.bytes, info.sha256)
        for info in [*metadata, *written]
    ]

    summary: dict[str, Any] = {
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "voxel_size": list(volume.voxel_size),
        "unit": volume.unit,
        "fibers": stats["fibers"],
        "components": stats["components"],
        "volume_fraction": stats["volume_fraction"],
        "threshold": threshold,
        "gamma": loaded.gamma,
        "sigmas": list(loaded.spec.sigmas),
        "chunking": plan.as_dict(),
        "orientation": stats.get("orientation"),
        "output": OUTPUT,
        "levels": [{"path": lv.path, "shape": list(lv.shape)} for lv in levels],
    }
    out_dir = ctx.workdir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_path = out_dir / "stats.json"
    stats_path.write_text(json.dumps({**summary, "statistics": stats}, indent=2))
    table_path = fibertable.write(out_dir / fibertable.FILE, rows)
    uploads: dict[str, Path] = {"stats.json": stats_path, fibertable.FILE: table_path}
    if params.qc:
        with ctx.timer.stage("qc"):
            title = (
                f"{ctx.spec.subject}: {stats['fibers']} fibers, volume fraction "
                f"{stats['volume_fraction']:.3f}, objectness > {cut:.3g}"
            )
            uploads["qc/fibers.png"] = qc.mid_slices(
                ctx.workdir / "out" / "qc" / "fibers.png",
                volume.array,
                labels[0],
                plan.dask_chunks,
                volume.voxel_size,
                title,
                client,
            )
    read = provenance.stored(ctx.spec.input_uri, ctx.settings)
    return PipelineResult(files=files, uploads=uploads, summary=summary, inputs=read)


__all__ = ["OUTPUT", "Loaded", "load", "run"]
