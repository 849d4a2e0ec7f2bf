"""The ``microstructure`` pipeline: fiber segmentation of an X-ray micro-CT volume (Zarr).

``load`` (while the cluster starts) validates the array and reads a small sample of it for the
objectness ``gamma``. ``run``: ITK objectness chunk by chunk (``map_overlap`` with the halo the
recursive Gaussian needs, chunks chosen so the halo costs little), one global threshold by
comparison, connected components across chunks (dask-image), fiber statistics from per-block
moments, the components renumbered to the fibers alone (``relabel``: specks under
``min_fiber_voxels`` become background), then an OME-Zarr image (the objectness) with the
fibers as its label image, written chunk by chunk by the workers, ``stats.json``, the
per-fiber table ``fibers.csv`` and a QC PNG.

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
import ome_zarr.writer  # noqa: F401 - for ngff.create, here: the workers never import it
from dask.delayed import delayed
from dask_image import ndmeasure
from distributed import wait

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.fanout import Measured, collect, record_tasks, worker_count
from consumers.pipelines.microstructure import fiberstats, fibertable, ngff, qc, relabel
from consumers.pipelines.microstructure.blocks import objectness_block
from consumers.pipelines.microstructure.chunking import ChunkPlan, plan_chunks, task_voxel_budget
from consumers.pipelines.microstructure.objectness import ObjectnessSpec
from consumers.pipelines.microstructure.readers.base import Selection
from consumers.pipelines.microstructure.volume import Volume, open_volume
from consumers.pipelines.microstructure.zarrstore import ObjectZarrStore
from shared.errors import InvalidInput
from shared.params import MicrostructureParams
from shared.store import ObjectInfo

#: Imported on every worker while the cluster starts. ``objectness_itk`` loads ITK's wrappers
#: and sets one ITK thread per worker process; the label graph is dask-image's.
WORKER_MODULES = (
    "consumers.pipelines.microstructure.objectness_itk",
    "consumers.pipelines.microstructure.blocks",
    "consumers.pipelines.microstructure.ngff",
    "consumers.pipelines.microstructure.fiberstats",
    "consumers.pipelines.microstructure.relabel",
    "dask_image.ndmeasure",
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


def _raise_task_errors(collection: Any) -> None:
    """``wait`` does not raise: re-raise the first failed task's own exception."""
    from distributed import futures_of

    for future in futures_of(collection):
        if future.status == "error":
            future.result()


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


def _filter(ctx: PipelineContext, loaded: Loaded, plan: ChunkPlan, client: Any) -> da.Array:
    """The objectness of the whole volume, chunk by chunk, persisted on the workers."""
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
        objectness: da.Array = client.persist(lazy.rechunk(plan.dask_chunks))
        wait(objectness)
        _raise_task_errors(objectness)
    record_tasks(ctx.timer, "objectness", collect(client, log))
    return objectness


def _threshold(objectness: da.Array, params: MicrostructureParams, client: Any) -> dict[str, Any]:
    if params.threshold != "otsu":
        return {"value": float(params.threshold), "method": "given"}
    stride = max(1, math.ceil((math.prod(objectness.shape) / OTSU_SAMPLE_VOXELS) ** (1 / 3)))
    sample = client.compute(objectness[::stride, ::stride, ::stride]).result()
    return {
        "value": fiberstats.otsu(sample, (0.0, 1.0)),
        "method": "otsu",
        "sample": {"origin": [0, 0, 0], "stride": [stride] * 3, "voxels": int(sample.size)},
    }


def _moments(labels: da.Array, n_labels: int, client: Any) -> np.ndarray:
    starts = [np.cumsum((0, *axis[:-1])) for axis in labels.chunks]
    blocks = labels.to_delayed()
    tasks = [
        delayed(fiberstats.block_moments)(
            blocks[idx], tuple(int(starts[a][i]) for a, i in enumerate(idx)), labels.shape
        )
        for idx in np.ndindex(*blocks.shape)
    ]
    rows = client.gather(client.compute(tasks))
    return fiberstats.merge_moments(list(rows), n_labels)


def _relabel(components: da.Array, table: np.ndarray, client: Any) -> da.Array:
    """The fibers' label image, block by block on the workers where the components lie."""
    # One copy of the table per worker, not one per task (a label per component: MBs on a
    # noisy volume).
    shared = client.scatter(table, broadcast=True, hash=True)
    lazy = da.map_blocks(relabel.apply, components, shared, dtype=np.uint32)
    labels: da.Array = client.persist(lazy)
    wait(labels)
    _raise_task_errors(labels)
    return labels


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
    objectness = _filter(ctx, loaded, plan, client)

    with ctx.timer.stage("threshold"):
        threshold = _threshold(objectness, params, client)
    with ctx.timer.stage("label"):
        components, _ = ndmeasure.label(objectness > threshold["value"])
        components = client.persist(components.astype(np.uint32))
        wait(components)
        _raise_task_errors(components)
        n_labels = int(client.compute(components.max()).result())
    with ctx.timer.stage("stats"):
        moments = _moments(components, n_labels, client)
        stats = fiberstats.fiber_statistics(
            moments,
            math.prod(volume.shape),
            min_fiber_voxels=params.min_fiber_voxels,
            voxel_size=volume.voxel_size,
            with_orientation=params.orientation,
        )
        table = relabel.lookup(moments, params.min_fiber_voxels)
        rows = fibertable.table(relabel.renumber(moments, table), volume.voxel_size)
        stats["fiber_table"] = fibertable.describe(rows, volume.unit)
    with ctx.timer.stage("relabel"):
        labels = _relabel(components, table, client)
        del components  # its blocks leave the workers' memory
    with ctx.timer.stage("write"):
        files, levels = _write_ngff(ctx, volume, plan, objectness, labels, rows, client)

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
            uploads["qc/fibers.png"] = _qc(ctx, volume, labels, stats, threshold, client)
    return PipelineResult(files=files, uploads=uploads, summary=summary)


def _write_ngff(
    ctx: PipelineContext,
    volume: Volume,
    plan: ChunkPlan,
    objectness: da.Array,
    labels: da.Array,
    rows: np.ndarray,
    client: Any,
) -> tuple[list[ObjectInfo], list[ngff.Level]]:
    store = ObjectZarrStore(ctx.out.child(OUTPUT))
    levels = ngff.pyramid(volume.shape, volume.voxel_size)
    image_arrays, label_arrays = ngff.create(
        store,
        levels,
        image_dtype=np.float32,
        label_dtype=np.uint32,
        storage=plan.storage,
        voxel_size=volume.voxel_size,
        unit=volume.unit,
        image_name="objectness",
        label_name=LABEL_NAME,
        label_count=len(rows),
        # Hover text for the viewers, when few enough for zarr.json (the table has it all).
        label_properties=fibertable.properties(rows[: ngff.MAX_DESCRIBED_LABELS]),
    )
    tasks = [
        *ngff.write_tasks(objectness, image_arrays, levels, "mean"),
        *ngff.write_tasks(labels, label_arrays, levels, "nearest"),
    ]
    written = [info for part in client.gather(client.compute(tasks)) for info in part]
    metadata = store.take_written()  # the groups' and arrays' zarr.json, written here
    files = [
        ObjectInfo(f"{OUTPUT}/{info.key}", info.bytes, info.sha256)
        for info in [*metadata, *written]
    ]
    return files, levels


def _qc(
    ctx: PipelineContext,
    volume: Volume,
    labels: da.Array,
    stats: dict[str, Any],
    threshold: dict[str, Any],
    client: Any,
) -> Path:
    mz, my, mx = qc.middle_indices(volume.shape)
    source = da.from_array(
        volume.array, chunks=volume.array.chunks, meta=np.empty((0, 0, 0), volume.dtype)
    )
    slices = [
        source[mz],
        source[:, my],
        source[:, :, mx],
        labels[mz],
        labels[:, my],
        labels[:, :, mx],
    ]
    parts = client.gather(client.compute(slices))
    title = (
        f"{ctx.spec.subject}: {stats['fibers']} fibers, volume fraction "
        f"{stats['volume_fraction']:.3f}, objectness > {threshold['value']:.3g}"
    )
    return qc.save_orthogonal(
        ctx.workdir / "out" / "qc" / "fibers.png",
        list(parts[:3]),
        list(parts[3:]),
        volume.voxel_size,
        title,
    )


__all__ = ["OUTPUT", "Loaded", "load", "run"]
