"""The microstructure benchmark's single-process contenders, (a) ITK on the whole volume and
(b) ``skimage.filters.sato``: ``reference`` runs in a fresh interpreter (``run_single_process``
starts it), so its imports count as our workers' do, and it imports no voxfleet package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _itk_classes() -> tuple[Any, Any, Any]:
    """ITK alone, as a script would load it: the four wrapper modules the pipeline loads too
    (``import itk`` would add ~20 CPU s of lazy loading to this side only)."""
    from itk.ITKCommonBasePython import itkMultiThreaderBase
    from itk.itkHessianRecursiveGaussianImageFilterPython import (
        itkHessianRecursiveGaussianImageFilterIF3 as Hessian,
    )
    from itk.itkHessianToObjectnessMeasureImageFilterPython import (
        itkHessianToObjectnessMeasureImageFilterISSRTD33IF3 as Objectness,
    )
    from itk.itkPyBufferPython import itkPyBufferIF3 as Buffer

    itkMultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)  # CPU seconds compare either way
    return Hessian, Objectness, Buffer


def _itk_objectness(volume: np.ndarray, params: dict[str, Any], classes: Any) -> np.ndarray:
    """The same filters and settings as the pipeline, on the whole volume in one call."""
    Hessian, Objectness, Buffer = classes  # noqa: N806 - ITK class names
    data = np.ascontiguousarray(volume, dtype=np.float32)
    image = Buffer._GetImageViewFromArray(data, data.shape[::-1], 1)
    result: np.ndarray | None = None
    for sigma in params["sigmas"]:
        hessian = Hessian.New()
        hessian.SetInput(image)
        hessian.SetSigma(sigma)
        hessian.SetNormalizeAcrossScale(True)
        measure = Objectness.New()
        measure.SetInput(hessian.GetOutput())
        measure.SetObjectDimension(1)
        measure.SetBrightObject(True)
        measure.SetAlpha(0.05)
        measure.SetBeta(1.0)
        measure.SetGamma(params["gamma"])
        measure.SetScaleObjectnessMeasure(False)
        measure.Update()
        view = np.asarray(Buffer._GetArrayViewFromImage(measure.GetOutput()))
        scale = np.array(view.view(np.float32).reshape(data.shape), copy=True)
        result = scale if result is None else np.maximum(result, scale)
    assert result is not None
    return result


def reference(kind: str, volume_path: str, params_json: str, out_dir: str) -> None:
    """Runs in a fresh process (no voxfleet imports): one of the single-process contenders;
    prints its stage seconds as JSON."""
    import resource

    import zarr
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    params = json.loads(params_json)
    # Libraries load before the clock starts: the filter stage times the filter only (the
    # whole-process CPU, imports included, is what the outer measurement takes).
    if kind == "itk":
        classes = _itk_classes()
    else:
        from skimage.filters import sato
    for name in ("response", "labels"):  # an earlier round's
        shutil.rmtree(f"{out_dir}/{kind}_{name}.zarr", ignore_errors=True)
    t0 = time.perf_counter()
    volume = zarr.open_array(volume_path, mode="r")[:]
    t1, cpu1 = time.perf_counter(), cpu()
    if kind == "itk":
        response = _itk_objectness(volume, params, classes)
        threshold = params["threshold"]
    else:
        response = sato(volume.astype(np.float32), sigmas=params["sigmas"], black_ridges=False)
        threshold = float(threshold_otsu(response[::4, ::4, ::4]))
    t2, filter_cpu = time.perf_counter(), cpu() - cpu1
    labels, count = ndimage.label(response > threshold)
    sizes = np.bincount(labels.ravel())
    t3 = time.perf_counter()
    zarr.save_array(f"{out_dir}/{kind}_response.zarr", response.astype(np.float32))
    zarr.save_array(f"{out_dir}/{kind}_labels.zarr", labels.astype(np.uint32))
    t4 = time.perf_counter()
    print(
        json.dumps(
            {
                "stages_s": {
                    "load": t1 - t0,
                    "filter": t2 - t1,
                    "label": t3 - t2,
                    "write": t4 - t3,
                },
                "filter_cpu_s": filter_cpu,
                "components": int(count),
                "volume_fraction": float(sizes[1:].sum() / volume.size),
                "threshold": float(threshold),
            }
        )
    )


def run_single_process(
    kind: str, volume: Path, params: dict[str, Any], out: Path | str
) -> dict[str, Any]:
    # bench/ is a plain folder: run this file's function without importing voxfleet packages.
    code = "import sys, runpy; ns = runpy.run_path(sys.argv[1]); ns['reference'](*sys.argv[2:])"
    done = subprocess.run(
        [sys.executable, "-c", code, __file__, kind, str(volume), json.dumps(params), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:  # say why: the output is captured, so nothing else would
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the {kind} contender failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
