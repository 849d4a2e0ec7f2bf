"""The ``tractography`` pipeline: the per-subject job of "Tractography with dask" (see the
references in docs/architecture.md).

One diffusion series (HCP, BIDS, QSIPrep) -> white-matter mask (its segmentation, or FA) ->
tensor FA (the ``dti`` fit) -> single-fibre response -> CSD fODFs fitted in chunks across the
cluster -> seeds in the white matter, tracked in shards by the workers, each shard written
straight to the store as a ``.trk`` (or ``.trx``) -> the shards merged into one
``tractogram.trx`` beside them (``merge``) -> FA and mask maps and a QC image for the consumer
to upload.

Every stage equals its serial dipy counterpart (see ``csd`` and ``tracking`` for why), and the
summary -- which the manifest carries -- lists every shard with its seed range, streamline
count, size and checksum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.diffusion import csd, qc, tracking, white_matter
from consumers.pipelines.diffusion.box import Box, margin_voxels
from consumers.pipelines.diffusion.dti import (
    brain_mask_upload,
    fit_tensor_values,
    series_summary,
    write_nifti,
)
from consumers.pipelines.diffusion.merge import merge_shards
from consumers.pipelines.diffusion.subject import Subject, check_subject, load_subject
from consumers.pipelines.fanout import part_count, record_tasks, worker_count
from shared.errors import InvalidInput
from shared.layouts import open_series
from shared.params import DtiParams, TractographyParams

#: Imported on every worker while the cluster starts: the modules of the three stages' tasks.
WORKER_MODULES = (
    "consumers.pipelines.diffusion.dti",
    "consumers.pipelines.diffusion.csd",
    "consumers.pipelines.diffusion.tracking",
    "dipy.reconst.dti",
)


@dataclass
class Loaded:
    subject: Subject
    wm_source: white_matter.WmSource
    #: The white-matter mask; None until FA is known when it comes from FA.
    wm: NDArray[np.bool_] | None


def _enough_volumes(gtab: Any, params: TractographyParams) -> None:
    n_dwi = int(np.count_nonzero(~gtab.b0s_mask))
    needed = csd.n_coefficients(params.sh_order_max)
    if n_dwi < needed:
        raise InvalidInput(
            f"only {n_dwi} diffusion-weighted volumes (b > {params.b0_threshold:g}); CSD at "
            f"sh_order_max {params.sh_order_max} fits {needed} coefficients: lower it"
        )


def check(ctx: PipelineContext) -> None:
    """Before any cluster starts: inputs (and the segmentation) present and sized, gradient
    table usable, enough directions for the CSD order."""
    params = ctx.params(TractographyParams)
    inputs, files = open_series(ctx.spec.input_uri, ctx.settings)
    source = white_matter.choose_source(params.wm_source, files)
    gtab = check_subject(
        inputs,
        files,
        ctx.settings,
        b0_threshold=params.b0_threshold,
        segmentation=source == "segmentation",
    )
    _enough_volumes(gtab, params)


def load(ctx: PipelineContext) -> Loaded:
    """Read and validate the subject (and its segmentation); runs before any cluster exists."""
    params = ctx.params(TractographyParams)
    with ctx.timer.stage("load"):
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        inputs, files = open_series(ctx.spec.input_uri, ctx.settings)
        source = white_matter.choose_source(params.wm_source, files)
        subject = load_subject(
            inputs, files, ctx.workdir, ctx.settings, b0_threshold=params.b0_threshold
        )
        _enough_volumes(subject.gtab, params)
        labels = None
        if source == "segmentation":
            labels = white_matter.read_segmentation(inputs, files, ctx.workdir, ctx.settings)
            assert files.segmentation is not None  # what choose_source chose it by
            subject.inputs["objects"].append(inputs.stat(files.segmentation).as_dict())
    if labels is None:
        return Loaded(subject, source, None)  # white matter from FA, once the cluster fitted it
    with ctx.timer.stage("mask"):
        wm_labels = white_matter.labels_for(files, params.wm_labels)
        mask = white_matter.wm_from_segmentation(*labels, subject, wm_labels)
    return Loaded(subject, source, mask)


def _tensor_maps(
    ctx: PipelineContext, subject: Subject, client: Any, params: TractographyParams
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FA (for tracking) and MD (for the tract profiles of a bundles follow-up) volumes."""
    dti_params = DtiParams(b0_threshold=params.b0_threshold, qc=False)
    fa_values, md_values, _ = fit_tensor_values(ctx, subject, client, dti_params)
    fa = np.zeros(subject.shape, dtype=np.float64)
    md = np.zeros(subject.shape, dtype=np.float64)
    # dipy gives NaN FA for a voxel with no usable signal; it stops tracking like FA 0 does.
    fa[subject.mask] = np.nan_to_num(fa_values, nan=0.0)
    md[subject.mask] = np.nan_to_num(md_values, nan=0.0)
    return fa, md


def _response(
    subject: Subject, mask: NDArray[np.bool_], fa: NDArray[np.float64], params: TractographyParams
) -> csd.Response:
    if params.response == "auto":
        return csd.response_auto(
            subject.gtab, subject.data, params.response_roi_radii, params.response_fa_thr
        )
    return csd.response_from_mask(
        subject.gtab, subject.data, mask & (fa > params.response_fa_thr), params.response_fa_thr
    )


def run(ctx: PipelineContext, loaded: Loaded, client: Any) -> PipelineResult:
    params = ctx.params(TractographyParams)
    subject = loaded.subject
    with ctx.timer.stage("dti"):
        fa, md = _tensor_maps(ctx, subject, client, params)
    mask = loaded.wm
    if mask is None:
        with ctx.timer.stage("mask"):
            mask = white_matter.wm_from_fa(fa, subject.mask, params.fa_wm_threshold)

    with ctx.timer.stage("response"):
        response = _response(subject, mask, fa, params)

    with ctx.timer.stage("csd"):
        fit = csd.fit_csd(
            client,
            subject.data,
            mask,
            subject.gtab,
            response,
            params.sh_order_max,
            params.csd_chunks,
        )
    ctx.timer.extra["csd_chunks"] = fit.chunks
    record_tasks(ctx.timer, "csd", fit.tasks)
    volumes = int(subject.data.shape[3])
    subject.release_data()  # what follows reads the coefficients, FA and masks only

    with ctx.timer.stage("tracking"):
        seeds = tracking.make_seeds(mask, subject.affine, params.seeds_per_voxel)
        if len(seeds) == 0:  # unreachable with a non-empty mask; kept as the last line of defence
            raise InvalidInput("no seeds: the white-matter mask is empty")
        n_shards = part_count(
            params.shards, tracking.SHARDS_PER_WORKER, worker_count(client), len(seeds)
        )
        box = (
            Box.around(mask, margin_voxels(params.step_size, subject.zooms))
            if params.tracker == "deterministic"
            else Box.whole(subject.shape)  # its draws depend on voxel coordinates (see box)
        )
        ctx.timer.extra["tracking_box"] = {"shape": list(box.shape), "fraction": box.fraction}
        tracked = tracking.track_sharded(
            client,
            seeds,
            fit.volume(box),
            fa,
            box,
            subject.affine,
            tracking.reference_header(subject.affine, subject.shape, subject.zooms),
            tracking.TrackingOptions.from_params(params),
            ctx.out,
            n_shards,
        )
    del fit
    ctx.timer.extra["shards"] = len(tracked.shards)
    record_tasks(ctx.timer, "tracking", tracked.tasks)
    with ctx.timer.stage("merge"):
        merged = merge_shards(
            ctx.out, [str(s["key"]) for s in tracked.shards], subject.affine, subject.shape
        )

    uploads: dict[str, Path] = {}
    with ctx.timer.stage("write"):
        uploads["fa.nii.gz"] = write_nifti(ctx, "fa.nii.gz", fa.astype(np.float32), subject)
        uploads["md.nii.gz"] = write_nifti(ctx, "md.nii.gz", md.astype(np.float32), subject)
        uploads["wm_mask.nii.gz"] = write_nifti(
            ctx, "wm_mask.nii.gz", mask.astype(np.uint8), subject
        )
        uploads |= brain_mask_upload(ctx, subject)
    if params.qc and tracked.density is not None:
        with ctx.timer.stage("qc"):
            uploads["qc/tractography.png"] = qc_image(ctx, subject, fa, mask, tracked.density)

    summary = {
        "streamlines": tracked.streamlines,
        # Streamlines that reached the image's edge and were snapped onto it or cut (bounds.py).
        "edge_streamlines": tracked.edge.as_dict(),
        "seeds": len(seeds),
        "seeds_per_voxel": params.seeds_per_voxel,
        "seed_grid": list(tracking.seed_grid(params.seeds_per_voxel)),
        "shards": tracked.shards,
        "tractogram": merged.as_dict(),  # the shards in one file, in shard order
        "wm_source": loaded.wm_source,  # what auto chose, or what was asked for
        "segmentation": subject.files.segmentation if loaded.wm_source == "segmentation" else None,
        "wm_voxels": int(np.count_nonzero(mask)),
        "brain_voxels": int(np.count_nonzero(subject.mask)),
        "fa_median_wm": round(float(np.median(fa[mask])), 8),
        "response": response.as_dict(),
        "sh_order_max": params.sh_order_max,
        "csd_chunks": ctx.timer.extra["csd_chunks"],
        "tracker": params.tracker,
        "output_format": params.output_format,
        "volumes": volumes,
        "nonfinite_values": subject.nonfinite_values,
        **series_summary(subject),
    }
    files = [*tracked.files, merged.info]
    return PipelineResult(files=files, uploads=uploads, summary=summary, inputs=subject.inputs)


def qc_image(
    ctx: PipelineContext,
    subject: Subject,
    fa: NDArray[np.float64],
    mask: NDArray[np.bool_],
    density: NDArray[np.int32],
) -> Path:
    """One PNG, three rows of mid-slices: FA, the white-matter mask on FA, and the streamline
    density on FA (log scale: a few bundles hold most of the streamlines)."""
    from matplotlib.image import imread, imsave

    folder = ctx.workdir / "out" / "qc"
    name = ctx.spec.subject
    rows = [
        qc.save_mid_slices(
            folder / "part-fa.png", fa, subject.affine, title=f"{name}: FA", vmin=0.0, vmax=1.0
        ),
        qc.save_mid_slices(
            folder / "part-wm.png",
            fa,
            subject.affine,
            title=f"{name}: white-matter mask ({int(mask.sum())} voxels)",
            vmin=0.0,
            vmax=1.0,
            overlay=mask.astype(np.uint8),
            overlay_cmap="cool",
            overlay_alpha=0.45,
        ),
        qc.save_mid_slices(
            folder / "part-density.png",
            fa,
            subject.affine,
            title=f"{name}: streamline density (log10, max {int(density.max())})",
            vmin=0.0,
            vmax=1.0,
            overlay=np.log10(1.0 + density),
            overlay_cmap="hot",
            overlay_alpha=0.8,
        ),
    ]
    images = [imread(path) for path in rows]
    width = max(image.shape[1] for image in images)
    padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0))) for im in images]
    path = folder / "tractography.png"
    imsave(path, np.concatenate(padded, axis=0))
    for part in rows:
        part.unlink()
    return path
