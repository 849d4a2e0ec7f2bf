"""The ``profiles`` pipeline: tract profiles of a committed bundles result.

bundles result (its manifest, every bundle's streamlines and ``flips``) + the FA and MD maps of
the tractography result those bundles came from -> the maps sent to every worker once -> every
bundle profiled as its own task across the cluster, largest first (``profiles.profile_task``:
oriented as the bundles job decided against the model, Gaussian-weighted, ``afq_profile``) ->
``profiles.parquet`` (subject, bundle, node, metric, value) and a QC image.

Its own job, after ``bundles`` (``shared.chain``): a profile run with other maps or nodes does
not redo the segmentation, and a failed profile step reruns alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from consumers.pipelines.base import PipelineContext, PipelineResult
from consumers.pipelines.bundles import inputs, profiles
from consumers.pipelines.fanout import map_scattered, record_tasks
from shared.manifest import Manifest
from shared.params import ProfilesParams
from shared.store import open_store

WORKER_MODULES = ("consumers.pipelines.bundles.profiles", "dipy.stats.analysis")
MIN_STREAMLINES = 2  # the Gaussian weights need a covariance


@dataclass
class Loaded:
    manifest: Manifest  # the bundles result's
    tractography: Manifest
    bundles: dict[str, tuple[Any, Any]]  # name -> (native streamlines, flips)
    maps: dict[str, Any]
    affine: Any
    read: list[str]  # keys below the bundles result that were downloaded


def _manifests(ctx: PipelineContext) -> tuple[Manifest, Manifest]:
    manifest = inputs.committed(ctx.spec.input_uri, ctx.settings, "bundles", "profiles")
    tractography = inputs.committed(manifest.input_uri, ctx.settings, "tractography", "profiles")
    return manifest, tractography


def check(ctx: PipelineContext) -> None:
    """Both manifests, before any cluster starts: a missing result, one that is not a bundles
    result over a committed tractography result, or maps it lacks, fail here in one line."""
    manifest, tractography = _manifests(ctx)
    inputs.map_keys(tractography, ctx.params(ProfilesParams).metrics, manifest.input_uri)


def _profiled(manifest: Manifest) -> list[dict[str, Any]]:
    return [b for b in manifest.summary.get("bundles", []) if b["streamlines"] >= MIN_STREAMLINES]


def load(ctx: PipelineContext) -> Loaded:
    params = ctx.params(ProfilesParams)
    with ctx.timer.stage("load"):
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        manifest, tractography = _manifests(ctx)
        found = _profiled(manifest)
        keys = [
            f"{manifest.attempt}/{k}"
            for b in found
            for k in (b["key"], f"bundles/{b['name']}.flips.npy")
        ]
        paths = inputs.fetch_listed(ctx.inputs, manifest, keys, ctx.workdir / "bundles")
        bundles = {
            b["name"]: (
                inputs.load_streamlines(paths[2 * i]).streamlines,
                np.load(paths[2 * i + 1]),
            )
            for i, b in enumerate(found)
        }
        maps, affine = inputs.download_maps(
            open_store(manifest.input_uri, ctx.settings),
            tractography,
            params.metrics,
            ctx.workdir,
        )
    return Loaded(manifest, tractography, bundles, maps, affine, keys)


def run(ctx: PipelineContext, loaded: Loaded, client: Any) -> PipelineResult:
    params = ctx.params(ProfilesParams)
    profiled: dict[str, dict[str, Any]] = {}
    with ctx.timer.stage("profiles"):
        # Largest first: the last task to start is a short one.
        parts = sorted(
            ((name, *loaded.bundles[name]) for name in loaded.bundles),
            key=lambda p: (-len(p[1]), p[0]),
        )
        if parts:
            results = map_scattered(
                client,
                profiles.profile_task,
                parts,
                params.profile_points,
                labels=[f"profile {name}" for name, _, _ in parts],
                shared=(loaded.maps, loaded.affine),
                scatter_parts=False,
            )
            record_tasks(ctx.timer, "profiles", results.stats)
            profiled = {str(r["name"]): r["profiles"] for r in results}

    uploads: dict[str, Any] = {}
    out = ctx.workdir / "out"
    if profiled:
        with ctx.timer.stage("write"):
            uploads["profiles.parquet"] = profiles.write_table(
                out / "profiles.parquet", ctx.spec.subject, profiled
            )
        if params.qc:
            with ctx.timer.stage("qc"):
                from consumers.pipelines.bundles import qc  # matplotlib: the consumer only

                uploads["qc/profiles.png"] = qc.profiles_image(
                    out / "qc" / "profiles.png", ctx.spec.subject, profiled
                )
    found = loaded.manifest.summary.get("bundles", [])
    summary = {
        "bundles": sorted(profiled),
        # Bundles found with fewer than two streamlines have no profile.
        "unprofiled": sorted(b["name"] for b in found if b["name"] not in profiled),
        "metrics": list(params.metrics),
        "nodes": params.profile_points,
        "mean": {
            name: {m: round(float(np.mean(v)), 6) for m, v in maps.items()}
            for name, maps in sorted(profiled.items())
        },
        "bundles_job": {
            "job_key": loaded.manifest.job_key,
            "attempt": loaded.manifest.attempt,
            "atlas": loaded.manifest.params.get("atlas"),
        },
        "tractography": {
            "uri": loaded.manifest.input_uri,
            "job_key": loaded.tractography.job_key,
            "attempt": loaded.tractography.attempt,
        },
    }
    listed = {entry["key"]: entry for entry in loaded.manifest.files}
    read = {
        "bundles": {
            "uri": ctx.spec.input_uri,
            "job_key": loaded.manifest.job_key,
            "attempt": loaded.manifest.attempt,
            "objects": [
                {k: listed[key][k] for k in ("key", "bytes", "sha256")} for key in loaded.read
            ],
        },
        "maps": {
            "uri": loaded.manifest.input_uri,
            "objects": [
                {k: e[k] for k in ("key", "bytes", "sha256")}
                for e in loaded.tractography.files
                if e["key"].rsplit("/", 1)[-1] in {inputs.PROFILE_MAPS[m] for m in params.metrics}
            ],
        },
    }
    return PipelineResult(uploads=uploads, summary=summary, inputs=read)
