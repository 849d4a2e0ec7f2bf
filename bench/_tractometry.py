"""The steps after tracking, measured on the tractography benchmark's own result: the merge into
``tractogram.trx`` (a stage of the tractography job, timed in the consumer), then the
``bundles`` and ``profiles`` jobs of the tractometry chain against the synthetic brain's atlas
(``producer.synth.atlas``), each through the real runner on its own 2-worker cluster; and the
profiles against dipy's serial calls over the same bundles and maps, timed side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import measure
from shared.timing import process_cpu_s


def merge_figures(timing: dict[str, Any]) -> dict[str, Any]:
    wall = float(timing["stages_s"]["merge"])
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(float(timing.get("stages_cpu_s", {}).get("merge", float("nan"))), 3),
        "fraction_of_job_wall": round(wall / float(timing["wall_s"]), 4),
    }


def after_tracking(outcome: Any, root: Path, dwi: Path, chain: bool) -> dict[str, Any]:
    """The figures of the steps after tracking, from the first tractography job's outcome: its
    merge, its memory (per process and per stage, from its ``timing.json``, and the size of the
    subject's DWI as float32, the unit of the memory target), and the bundles and profiles jobs
    over its result unless ``chain`` is off."""
    import nibabel as nib

    timing = outcome.timing
    shape = nib.load(str(dwi)).shape  # type: ignore[attr-defined]
    figures: dict[str, Any] = {
        "merge": merge_figures(timing),
        "memory": {
            "dwi_float32_mib": round(float(np.prod(shape)) * 4 / 2**20, 1),
            "peak_rss_mib": timing.get("peak_rss_mib"),
            "stages_peak_rss_mib": timing.get("stages_peak_rss_mib"),
        },
    }
    if chain:
        figures["tractometry"] = measure_chain(
            outcome.manifest_uri, root / "out0", root / "tractometry"
        )
    return figures


def serial_profiles(job: Path, bundles: list[dict[str, Any]], maps: Path) -> dict[str, Any]:
    """What a user writes with dipy alone, over the bundles job's files: per bundle, load it,
    orient it, Gaussian weights, ``afq_profile`` of FA and MD."""
    import nibabel as nib
    from dipy.io.streamline import load_tractogram
    from dipy.stats.analysis import afq_profile, gaussian_weights
    from nibabel.streamlines.array_sequence import ArraySequence

    wall0, cpu0 = time.perf_counter(), process_cpu_s()
    images: dict[str, Any] = {m: nib.load(str(maps / f"{m}.nii.gz")) for m in ("fa", "md")}
    volumes = {m: np.asarray(img.dataobj, dtype=np.float64) for m, img in images.items()}
    found: dict[str, dict[str, Any]] = {}
    for bundle in bundles:
        name = bundle["name"]
        sft = load_tractogram(str(job / bundle["key"]), "same", bbox_valid_check=False)
        flips = np.load(job / "bundles" / f"{name}.flips.npy")
        lines = ArraySequence(
            [s[::-1] if f else s for s, f in zip(sft.streamlines, flips, strict=True)]
        )
        weights = gaussian_weights(lines, n_points=100)
        found[name] = {
            m: afq_profile(v, lines, images[m].affine, n_points=100, weights=weights)
            for m, v in volumes.items()
        }
    wall, cpu = time.perf_counter() - wall0, process_cpu_s() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "profiles": found}


def measure_chain(tractography_manifest: str, results: Path, workdir: Path) -> dict[str, Any]:
    """The bundles and profiles jobs over a committed tractography result; their figures."""
    import pyarrow.parquet as pq

    from consumers.runner import execute
    from producer.synth.atlas import write_tract_atlas
    from shared import chain
    from shared.jobspec import JobSpec
    from shared.manifest import Manifest
    from shared.settings import Settings
    from shared.store import LocalStore

    write_tract_atlas(LocalStore(workdir / "atlas"))
    bundles_spec = JobSpec(
        pipeline="bundles",
        input_uri=str(Path(tractography_manifest).parent),
        results_uri=str(results),
        params={"atlas": str(workdir / "atlas")},
        cluster="local:2",
    )
    figures: dict[str, Any] = {}
    outcomes = {}
    for spec in chain.steps(bundles_spec):
        with measure() as cost:
            outcome = execute(spec, Settings())
        outcomes[spec.pipeline] = outcome
        stages = outcome.timing["stages_s"]
        figures[spec.pipeline] = {
            **cost.as_dict(),
            "stages_s": stages,
            # The recognition or profile tasks' CPU on the workers (also in cpu_s).
            "tasks_cpu_s": round(
                sum(
                    sum(outcome.timing.get(f"{stage}_workers_cpu_s", {}).values())
                    for stage in ("recognize", "profiles")
                ),
                3,
            ),
        }
        print(f"{spec.pipeline}: {cost.as_dict()}\n  stages {stages}", flush=True)
    found = outcomes["bundles"].summary["bundles"]
    figures["bundles"]["found"] = {b["name"]: b["streamlines"] for b in found}
    bundles_manifest = Manifest.model_validate_json(
        Path(outcomes["bundles"].manifest_uri).read_bytes()
    )
    job = Path(outcomes["bundles"].manifest_uri).parent / bundles_manifest.attempt
    maps = (
        Path(tractography_manifest).parent
        / Manifest.model_validate_json(Path(tractography_manifest).read_bytes()).attempt
    )
    profiled = [b for b in found if b["streamlines"] >= 2]
    serial = serial_profiles(job, profiled, maps)
    profiles_manifest = Manifest.model_validate_json(
        Path(outcomes["profiles"].manifest_uri).read_bytes()
    )
    table = pq.read_table(
        Path(outcomes["profiles"].manifest_uri).parent
        / profiles_manifest.attempt
        / "profiles.parquet"
    ).to_pylist()
    worst = 0.0
    for name, maps_of in serial["profiles"].items():
        for metric, values in maps_of.items():
            ours = [r["value"] for r in table if r["bundle"] == name and r["metric"] == metric]
            worst = max(worst, float(np.abs(np.asarray(ours) - values).max()))
    figures["profiles"] |= {
        "serial_wall_s": round(serial["wall_s"], 3),
        "serial_cpu_s": round(serial["cpu_s"], 3),
        "max_abs_diff_vs_serial": worst,
        "profiled_bundles": len(profiled),
        "profiled_streamlines": sum(b["streamlines"] for b in profiled),
    }
    return figures
