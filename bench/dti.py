"""The ``dti`` job (chunked tensor fit on a 2-worker LocalCluster, through the real runner)
vs the plain serial dipy calls on the same subject, in one run.

``python -m bench dti [--size=small|medium|hcp]`` (default medium).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from dipy.core.gradients import gradient_table
from dipy.io.gradients import read_bvals_bvecs
from dipy.reconst.dti import TensorModel

from bench.harness import measure, write_results
from consumers.runner import execute
from producer.synth.hcp import write_subject
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import LocalStore


def serial_reference(subject: Path, out: Path) -> dict[str, float]:
    """What a user would write with dipy alone: load, fit the whole volume, save FA and MD."""
    t0 = time.perf_counter()
    dwi = nib.load(subject / "T1w/Diffusion/data.nii.gz")
    data = np.asarray(dwi.get_fdata(dtype=np.float32))
    mask = np.asarray(nib.load(subject / "T1w/Diffusion/nodif_brain_mask.nii.gz").dataobj) > 0
    bvals, bvecs = read_bvals_bvecs(
        str(subject / "T1w/Diffusion/bvals"), str(subject / "T1w/Diffusion/bvecs")
    )
    t1 = time.perf_counter()
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs, b0_threshold=50)).fit(data, mask=mask)
    fa, md = fit.fa.astype(np.float32), fit.md.astype(np.float32)
    t2 = time.perf_counter()
    nib.save(nib.Nifti1Image(fa, dwi.affine), out / "fa.nii.gz")
    nib.save(nib.Nifti1Image(md, dwi.affine), out / "md.nii.gz")
    return {"load": t1 - t0, "dti": t2 - t1, "write": time.perf_counter() - t2}


def main(options: list[str]) -> dict[str, Any]:
    size = next((o.split("=", 1)[1] for o in options if o.startswith("--size=")), "medium")
    with tempfile.TemporaryDirectory(prefix="vf-bench-dti-") as tmp:
        root = Path(tmp)
        write_subject(LocalStore(root / "in"), "100307", size=size, seed=1)
        spec = JobSpec(
            pipeline="dti",
            input_uri=str(root / "in" / "100307"),
            results_uri=str(root / "out"),
            cluster="local:2",
        )
        with measure() as ours:
            outcome = execute(spec, Settings())
        (root / "ref").mkdir()
        with measure() as ref:
            serial_stages = serial_reference(root / "in" / "100307", root / "ref")
    stages = outcome.timing["stages_s"]
    overhead = sum(stages.get(k, 0.0) for k in ("cluster_acquire", "cluster_release", "publish"))
    busy = list(outcome.timing.get("dti_workers_busy_s", {}).values())
    figures = {
        "size": size,
        "speedup_wall": round(ref.wall_s / ours.wall_s, 3),
        "cpu_inflation": round(ours.cpu_s / ref.cpu_s, 3),
        "speedup_fit": round(serial_stages["dti"] / max(stages.get("dti", 0.0), 1e-9), 3),
        "balance": round(float(np.mean(busy) / np.max(busy)), 3) if busy else None,
        "overhead_fraction": round(overhead / ours.wall_s, 3),
        "ours": ours.as_dict(),
        "serial": ref.as_dict(),
        "stages_s": stages,
        "serial_stages_s": {k: round(v, 4) for k, v in serial_stages.items()},
        "note": "ours includes starting a fresh 2-worker LocalCluster (ephemeral by design)",
    }
    write_results("dti", figures)
    return figures
