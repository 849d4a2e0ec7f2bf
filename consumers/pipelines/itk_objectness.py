"""ITK's Hessian objectness filters, loaded once per process (a Dask worker imports this
module while the cluster starts: it is in the pipeline's ``worker_modules``; the consumer never
does).

Only the four wrapper modules needed are imported. ``import itk`` followed by the snake-case
functions pulls in every module they depend on through ITK's lazy loader: measured here ~25 CPU
seconds per process, against ~5 for the direct imports, paid by every worker of every ephemeral
cluster. ITK holds the GIL and would start one thread per core in every worker process, so the
global default is set to one thread here, and each filter is told so again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.vesselness import Crop, ObjectnessSpec

try:  # the wrapper modules that hold the classes used (ITK 5.x names)
    from itk.ITKCommonBasePython import itkMultiThreaderBase as _Threads
    from itk.itkHessianRecursiveGaussianImageFilterPython import (
        itkHessianRecursiveGaussianImageFilterIF3 as _Hessian,
    )
    from itk.itkHessianToObjectnessMeasureImageFilterPython import (
        itkHessianToObjectnessMeasureImageFilterISSRTD33IF3 as _Objectness,
    )
    from itk.itkPyBufferPython import itkPyBufferIF3 as _Buffer
except ImportError:  # pragma: no cover - a future ITK that moved them: the slow, public path
    import itk

    _Threads = itk.MultiThreaderBase
    _Image = itk.Image[itk.F, 3]
    _Hessian = itk.HessianRecursiveGaussianImageFilter[_Image]
    _Objectness = itk.HessianToObjectnessMeasureImageFilter[
        itk.Image[itk.SymmetricSecondRankTensor[itk.D, 3], 3], _Image
    ]
    _Buffer = itk.PyBuffer[_Image]

_Threads.SetGlobalDefaultNumberOfThreads(1)


def _one_scale(
    image: Any, sigma: float, spec: ObjectnessSpec, crop: Crop | None
) -> NDArray[np.float32]:
    hessian = _Hessian.New()
    hessian.SetInput(image)
    hessian.SetSigma(float(sigma))
    # Scale-normalised derivatives: responses at different sigmas are comparable (max over
    # scales), and gamma does not depend on sigma.
    hessian.SetNormalizeAcrossScale(True)
    hessian.SetNumberOfWorkUnits(1)
    measure = _Objectness.New()
    measure.SetInput(hessian.GetOutput())
    measure.SetObjectDimension(1)
    measure.SetBrightObject(bool(spec.bright))
    measure.SetAlpha(float(spec.alpha))
    measure.SetBeta(float(spec.beta))
    measure.SetGamma(float(spec.gamma))
    # Unscaled: the measure stays in [0, 1] whatever the intensity units, so a threshold
    # means the same on every volume.
    measure.SetScaleObjectnessMeasure(False)
    measure.SetNumberOfWorkUnits(1)
    if crop is not None:
        # The measure is voxel-wise: ask for the kept region only. The Hessian filter still
        # computes its whole input (it enlarges its own requested region to all of it), so the
        # kept voxels are exactly those of the uncropped call; the halo's eigen-analysis, about
        # half of the filter's CPU there, is skipped.
        measure.UpdateOutputInformation()
        output = measure.GetOutput()
        region = type(output.GetLargestPossibleRegion())(output.GetLargestPossibleRegion())
        size = region.GetSize()
        # ITK orders axes x, y, z; ``crop`` is (z, y, x) like the array.
        region.SetIndex([int(crop[2 - i][0]) for i in range(3)])
        region.SetSize([int(size[i]) - crop[2 - i][0] - crop[2 - i][1] for i in range(3)])
        output.SetRequestedRegion(region)
    measure.Update()
    output = measure.GetOutput()
    size = output.GetBufferedRegion().GetSize()
    shape = tuple(int(size[i]) for i in reversed(range(3)))
    view = np.asarray(_Buffer._GetArrayViewFromImage(output)).view(np.float32).reshape(shape)
    return np.array(view, copy=True)  # the view dies with the filter


def objectness(
    volume: NDArray[Any], spec: ObjectnessSpec, crop: Crop | None = None
) -> NDArray[np.float32]:
    """Objectness of a 3D array (z, y, x) in one ITK call per sigma; float32 in [0, 1].
    ``crop``: voxels to leave out of the result before and after, per axis (a chunk's halo):
    the Hessian sees all of ``volume``, the result is the rest."""
    if volume.ndim != 3:
        raise ValueError(f"objectness needs a 3D array, got shape {volume.shape}")
    sides = zip(crop or (), volume.shape, strict=False)
    if any(a < 0 or b < 0 or a + b >= n for (a, b), n in sides):
        raise ValueError(f"crop {crop} leaves nothing of shape {volume.shape}")
    if crop is not None and not any(a or b for a, b in crop):
        crop = None
    data = np.ascontiguousarray(volume, dtype=np.float32)
    image = _Buffer._GetImageViewFromArray(data, data.shape[::-1], 1)
    result: NDArray[np.float32] | None = None
    for sigma in spec.sigmas:
        scale = _one_scale(image, sigma, spec, crop)
        result = scale if result is None else np.maximum(result, scale, out=result)
    assert result is not None
    del image  # the ITK image is a view of ``data``; drop it before ``data`` goes
    return result
