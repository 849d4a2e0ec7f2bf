"""The ``bundles`` pipeline: RecoBundles segmentation of a committed tractography result.

tractography result (its manifest and shards) + atlas (model bundles, optionally a whole-brain
tractogram) -> the subject's streamlines registered to the atlas (dipy's whole-brain SLR, once,
on the consumer) -> the registered tractogram clustered once (``RecoBundles``) and sent to every
worker once -> every model bundle recognised as its own task across the cluster, largest first
(see ``recognition``: each equals dipy's serial call) -> one tractogram per bundle, in the
subject's native space (the recognised streamlines as tracked, not as registered), with counts,
lengths and shape similarity to the model in the summary, and a QC image. Beside each bundle,
its streamlines' indices in the tractogram and which of them run against the model bundle
(``flips``): the orientation the ``profiles`` job that follows samples the bundle in.

Work is divided by bundle, not by shard: RecoBundles compares a model with clusters of the
*whole* tractogram, and clustering shards separately would change which streamlines it finds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.bundles import inputs, recognition
from consumers.pipelines.fanout import map_scattered, record_tasks
from shared import provenance
from shared.errors import InvalidInput
from shared.manifest import Manifest
from shared.params import BundlesParams

#: Imported on every worker while the cluster starts: the recognition task and dipy's stack.
WORKER_MODULES = (
    "consumers.pipelines.bundles.recognition",
    "dipy.segment.bundles",
    "dipy.align.streamlinear",
)


@dataclass
class Loaded:
    manifest: Manifest
    tractogram: inputs.Tractogram
    atlas: inputs.Atlas


def check(ctx: PipelineContext) -> None:
    """Listings and the manifest only, before any cluster starts: a missing or uncommitted
    result, or an atlas with no model bundles, fails here in one line."""
    params = ctx.params(BundlesParams)
    inputs.committed_tractography(ctx.spec.input_uri, ctx.settings)
    inputs.list_atlas(params.atlas, ctx.settings)


def load(ctx: PipelineContext) -> Loaded:
    params = ctx.params(BundlesParams)
    with ctx.timer.stage("load"):
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        manifest = inputs.committed_tractography(ctx.spec.input_uri, ctx.settings)
        listing = inputs.list_atlas(params.atlas, ctx.settings)
        tractogram = inputs.download_tractography(ctx.inputs, manifest, ctx.workdir)
        atlas = inputs.download_atlas(listing, ctx.settings, ctx.workdir)
    return Loaded(manifest, tractogram, atlas)


def register(
    streamlines: Any, atlas: inputs.Atlas, params: BundlesParams
) -> tuple[Any, NDArray[np.float64]]:
    """The subject's streamlines moved into atlas space (dipy's ``whole_brain_slr``) and the
    4x4 matrix that did it; identity when registration is off."""
    if not params.whole_brain_slr:
        return streamlines, np.eye(4)
    from dipy.align.streamlinear import whole_brain_slr
    from nibabel.streamlines.array_sequence import ArraySequence

    static = atlas.whole_brain
    if static is None:
        static = ArraySequence()
        for bundle in atlas.bundles.values():
            static.extend(bundle)
    try:
        moved, matrix, _, _ = whole_brain_slr(
            static,
            streamlines,
            x0=params.slr_transform,
            rm_small_clusters=params.slr_min_cluster,
            greater_than=params.slr_min_length,
            less_than=params.slr_max_length,
            progressive=params.slr_progressive,
            rng=np.random.default_rng(params.random_seed),
            num_threads=recognition.TASK_THREADS,
        )
    except ValueError as exc:  # no streamlines in the length range, no clusters left
        raise InvalidInput(f"whole-brain registration: {exc}") from None
    return moved, np.asarray(matrix, dtype=np.float64)


def _lengths(streamlines: Any) -> NDArray[np.float64]:
    from dipy.tracking.streamlinespeed import length

    return np.asarray(length(streamlines), dtype=np.float64) if len(streamlines) else np.zeros(0)


def _write_bundle(
    ctx: PipelineContext, name: str, streamlines: Any, reference: Any, fmt: str
) -> Path:
    from dipy.io.stateful_tractogram import StatefulTractogram
    from dipy.io.streamline import save_tractogram
    from dipy.io.utils import Space

    path = ctx.workdir / "out" / "bundles" / f"{name}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    sft = StatefulTractogram(streamlines, reference, Space.RASMM)
    # The streamlines are the tractography's own, as tracked: valid wherever they were.
    save_tractogram(sft, str(path), bbox_valid_check=False)
    return path


def run(ctx: PipelineContext, loaded: Loaded, client: Any) -> PipelineResult:
    params = ctx.params(BundlesParams)
    subject = loaded.tractogram.streamlines
    with ctx.timer.stage("register"):
        moved, matrix = register(subject, loaded.atlas, params)
    with ctx.timer.stage("cluster"):
        recognizer = recognition.make_recognizer(moved, params)
    del moved  # the recognizer holds the registered streamlines it kept

    with ctx.timer.stage("recognize"):
        models = sorted(
            (recognition.ModelBundle(n, s) for n, s in loaded.atlas.bundles.items()),
            key=lambda m: (-m.cost, m.name),  # largest first: the last task to start is short
        )
        # The clustered tractogram: one copy per worker, sent once.
        remote = client.scatter(recognizer, broadcast=True, hash=False)
        results = map_scattered(
            client,
            recognition.recognize_task,
            models,
            remote,
            recognition.RecognitionOptions.from_params(params),
            labels=[f"bundle {m.name}" for m in models],
            # A bundle's cost is its local SLR over the neighbours it finds, known only once it
            # runs: the scheduler hands out the next bundle to whichever worker is free.
            scatter_parts=False,
        )
        del remote
    record_tasks(ctx.timer, "recognize", results.stats)

    uploads: dict[str, Path] = {}
    bundles: list[dict[str, Any]] = []
    native: dict[str, Any] = {}
    with ctx.timer.stage("write"):
        reference = loaded.tractogram.reference
        for r in sorted(results, key=lambda r: str(r["name"])):
            name, labels = str(r["name"]), r["labels"]
            native[name] = subject[labels]
            key = f"bundles/{name}.{params.output_format}"
            uploads[key] = _write_bundle(ctx, name, native[name], reference, params.output_format)
            index_path = ctx.workdir / "out" / "bundles" / f"{name}.indices.npy"
            np.save(index_path, labels)
            uploads[f"bundles/{name}.indices.npy"] = index_path
            flips_path = index_path.with_name(f"{name}.flips.npy")
            np.save(flips_path, np.asarray(r["flips"], dtype=bool))
            uploads[f"bundles/{name}.flips.npy"] = flips_path
            lengths = _lengths(native[name])
            bundles.append(
                {
                    "name": name,
                    "key": key,
                    "streamlines": len(labels),
                    "model_streamlines": r["model_streamlines"],
                    "shape_similarity": round(float(r["shape_similarity"]), 6),
                    "length_mean_mm": round(float(lengths.mean()), 3) if len(lengths) else None,
                    "length_std_mm": round(float(lengths.std()), 3) if len(lengths) else None,
                }
            )
    if params.qc:
        with ctx.timer.stage("qc"):
            from consumers.pipelines.bundles import qc  # matplotlib: the consumer only

            uploads["qc/bundles.png"] = qc.bundles_image(
                ctx.workdir / "out" / "qc" / "bundles.png", ctx.spec.subject, native
            )

    summary = {
        "bundles": bundles,
        "recognized": sum(b["streamlines"] for b in bundles),
        "bundles_found": sum(1 for b in bundles if b["streamlines"] > 0),
        "streamlines": len(subject),
        "tractography": {
            "job_key": loaded.manifest.job_key,
            "attempt": loaded.manifest.attempt,
            "shards": loaded.tractogram.shards,
        },
        "atlas": {
            "uri": loaded.atlas.listing.uri,
            "whole_brain": loaded.atlas.listing.whole_brain,
            "files": loaded.atlas.files,
        },
        "registration": {
            "registered": params.whole_brain_slr,
            "transform": params.slr_transform if params.whole_brain_slr else None,
            "matrix": [[round(float(v), 8) for v in row] for row in matrix],
        },
        "shape_similarity_threshold_mm": recognition.SHAPE_THRESHOLD_MM,
        "output_format": params.output_format,
    }
    read = {
        "tractography": {
            "uri": ctx.spec.input_uri,
            "job_key": loaded.manifest.job_key,
            "attempt": loaded.manifest.attempt,
            "objects": [
                {k: s[k] for k in ("key", "bytes", "sha256")}
                for s in loaded.manifest.summary["shards"]
            ],
        },
        "atlas": provenance.stored(params.atlas, ctx.settings),
    }
    return PipelineResult(uploads=uploads, summary=summary, inputs=read)
