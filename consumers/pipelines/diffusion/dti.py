"""The ``dti`` pipeline: a diffusion tensor fit (FA and MD maps) of one diffusion series.

The mask voxels are flattened to one (voxels, volumes) array, split into contiguous chunks and
scattered to the workers; each task fits its chunk with dipy and sends back FA and MD only.
The tensor fit is independent per voxel (dipy clips to a fixed minimum signal, not a data-
dependent one), so the chunked result equals a serial fit of the whole volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.diffusion.subject import Subject, check_subject, load_subject
from consumers.pipelines.fanout import map_scattered, part_count, record_tasks, worker_count
from shared.errors import InvalidInput
from shared.layouts import open_series
from shared.params import DtiParams

#: Imported on every worker while the cluster starts: the task's module and dipy's tensor model.
WORKER_MODULES = ("consumers.pipelines.diffusion.dti", "dipy.reconst.dti")

CHUNKS_PER_WORKER = 4  # a few per worker lets a fast worker take over a slow one's share
# Six tensor elements plus S0: fewer diffusion-weighted volumes leave the fit underdetermined.
MIN_DWI_VOLUMES = 6
WM_FA_THRESHOLD = 0.2  # a common FA cut for "white matter" in summaries; no segmentation needed


def _enough_volumes(gtab: Any, params: DtiParams) -> None:
    n_dwi = int(np.count_nonzero(~gtab.b0s_mask))
    if n_dwi < MIN_DWI_VOLUMES:
        raise InvalidInput(
            f"only {n_dwi} diffusion-weighted volumes (b > {params.b0_threshold:g}); "
            f"a tensor fit needs at least {MIN_DWI_VOLUMES}"
        )


def check(ctx: PipelineContext) -> None:
    """Before any cluster starts: inputs present and sized, gradient table usable."""
    params = ctx.params(DtiParams)
    inputs, files = open_series(ctx.spec.input_uri, ctx.settings)
    gtab = check_subject(inputs, files, ctx.settings, b0_threshold=params.b0_threshold)
    _enough_volumes(gtab, params)


def load(ctx: PipelineContext) -> Subject:
    """Read and validate the subject; runs before any cluster exists."""
    params = ctx.params(DtiParams)
    with ctx.timer.stage("load"):
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        inputs, files = open_series(ctx.spec.input_uri, ctx.settings)
        subject = load_subject(
            inputs, files, ctx.workdir, ctx.settings, b0_threshold=params.b0_threshold
        )
        _enough_volumes(subject.gtab, params)
    return subject


def fit_chunk(
    chunk: NDArray[np.float32], gtab: Any, fit_method: str
) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]:
    """Runs on a worker: FA and MD of a (voxels, volumes) chunk.

    Module-level so it pickles by reference and workers import it instead of receiving code.
    """
    from dipy.reconst.dti import TensorModel

    fit = TensorModel(gtab, fit_method=fit_method).fit(chunk)
    return np.asarray(fit.fa), np.asarray(fit.md)


def fit_tensor_values(
    ctx: PipelineContext, subject: Subject, client: Any, params: DtiParams
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """FA and MD of the mask voxels (in mask order, float64 as dipy computes them) fitted across
    the cluster, and the chunk count. Tractography needs FA at full precision: its stopping
    criterion compares it with a threshold, and so does the serial reference."""
    voxels = subject.data[subject.mask]  # (n_voxels, n_volumes), C order = mask order
    n_chunks = part_count(params.chunks, CHUNKS_PER_WORKER, worker_count(client), len(voxels))
    # array_split spreads the remainder over the first chunks: no voxel is dropped.
    chunks = np.array_split(voxels, n_chunks)
    del voxels
    results = map_scattered(
        client,
        fit_chunk,
        chunks,
        subject.gtab,
        params.fit_method,
        labels=[f"tensor chunk {i}" for i in range(len(chunks))],
    )
    del chunks

    record_tasks(ctx.timer, "dti", results.stats)
    ctx.timer.extra["dti_chunks"] = n_chunks

    # gather keeps submission order, and the chunks are consecutive runs of mask voxels.
    fa = np.concatenate([r[0] for r in results]).astype(np.float64, copy=False)
    md = np.concatenate([r[1] for r in results]).astype(np.float64, copy=False)
    return fa, md, n_chunks


def fit_tensor(
    ctx: PipelineContext, subject: Subject, client: Any, params: DtiParams
) -> tuple[NDArray[np.float32], NDArray[np.float32], int]:
    """FA and MD volumes (zero outside the mask) fitted across the cluster, and the chunk count."""
    fa_values, md_values, n_chunks = fit_tensor_values(ctx, subject, client, params)
    fa = np.zeros(subject.shape, dtype=np.float32)
    md = np.zeros(subject.shape, dtype=np.float32)
    fa[subject.mask] = fa_values
    md[subject.mask] = md_values
    return fa, md, n_chunks


def write_nifti(ctx: PipelineContext, key: str, volume: NDArray[Any], subject: Subject) -> Path:
    """A volume on the subject's grid as ``workdir/out/{key}``, for the publish stage."""
    img: Any = nib.Nifti1Image(volume, subject.affine)
    # Keep the input's space labels (scanner / aligned / MNI...), not nibabel's defaults.
    qform_code, sform_code = subject.xform_codes
    img.set_qform(subject.affine, code=qform_code)
    img.set_sform(subject.affine, code=sform_code)
    img.header.set_xyzt_units(xyz="mm")
    path = ctx.workdir / "out" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _summary(
    subject: Subject, fa: NDArray[np.float32], md: NDArray[np.float32], n_chunks: int
) -> dict[str, Any]:
    fa_in, md_in = fa[subject.mask], md[subject.mask]
    wm = fa_in[fa_in > WM_FA_THRESHOLD]

    def stat(values: NDArray[Any], how: Any) -> float | None:
        # None rather than NaN: the summary goes to JSON, which has no NaN.
        finite = values[np.isfinite(values)]
        return round(float(how(finite)), 8) if finite.size else None

    return {
        "voxels": int(fa_in.size),
        "chunks": n_chunks,
        "fa_median": stat(fa_in, np.median),
        "fa_mean_wm": stat(wm, np.mean),
        "wm_voxels": int(wm.size),
        "md_median": stat(md_in, np.median),
        "volumes": int(subject.data.shape[3]),
        "b0_volumes": int(np.count_nonzero(subject.gtab.b0s_mask)),
        "nonfinite_values": subject.nonfinite_values,
        **series_summary(subject),
    }


def series_summary(subject: Subject) -> dict[str, Any]:
    """What the job read: the layout, the series' BIDS entities and the brain mask's source."""
    return {
        "layout": subject.files.layout,
        "entities": dict(subject.files.entities),
        "brain_mask_source": subject.mask_source,
    }


def brain_mask_upload(ctx: PipelineContext, subject: Subject) -> dict[str, Path]:
    """The brain mask, when the job computed it (the layout had none): it defines every map."""
    if subject.mask_source == "layout":
        return {}
    mask = subject.mask.astype(np.uint8)
    return {"brain_mask.nii.gz": write_nifti(ctx, "brain_mask.nii.gz", mask, subject)}


def run(ctx: PipelineContext, subject: Subject, client: Any) -> PipelineResult:
    params = ctx.params(DtiParams)
    with ctx.timer.stage("dti"):
        fa, md, n_chunks = fit_tensor(ctx, subject, client, params)
    uploads: dict[str, Path] = {}
    with ctx.timer.stage("write"):
        uploads["fa.nii.gz"] = write_nifti(ctx, "fa.nii.gz", fa, subject)
        uploads["md.nii.gz"] = write_nifti(ctx, "md.nii.gz", md, subject)
        uploads |= brain_mask_upload(ctx, subject)
    if params.qc:
        # Here, not at the top: Dask workers import this module for fit_chunk, and matplotlib
        # costs each of them seconds of CPU at start-up for an image only the consumer draws.
        from consumers.pipelines.diffusion import qc

        with ctx.timer.stage("qc"):
            png = qc.save_mid_slices(
                ctx.workdir / "out" / "qc" / "fa.png",
                fa,
                subject.affine,
                title=f"{ctx.spec.subject}: FA ({params.fit_method})",
                vmin=0.0,
                vmax=1.0,
            )
            uploads["qc/fa.png"] = png
    summary = _summary(subject, fa, md, n_chunks)
    return PipelineResult(uploads=uploads, summary=summary, inputs=subject.inputs)
