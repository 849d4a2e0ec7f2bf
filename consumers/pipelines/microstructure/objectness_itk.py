"""ITK's Hessian objectness, loaded once per process (a Dask worker imports this module while the
cluster starts: it is in the pipeline's ``worker_modules``; the consumer never does).

Only the wrapper modules needed are imported. ``import itk`` followed by the snake-case
functions pulls in every module they depend on through ITK's lazy loader: measured here ~25 CPU
seconds per process, against ~4 for the direct imports, paid by every worker of every ephemeral
cluster. ITK holds the GIL and would start one thread per core in every worker process, so the
global default is set to one thread here, and each filter is told so again.

Two ways to the same numbers:

- ``objectness`` (the pipeline's): the Hessian from 1-D recursive Gaussian passes
  (``recursive_gaussian``: ITK's ``RecursiveGaussianImageFilter``, bit for bit, compiled to run
  many lines at once), then ITK's ``HessianToObjectnessMeasureImageFilter``. The passes are
  those ``HessianRecursiveGaussianImageFilter`` runs, in its order (``_TREE``), so the Hessian
  is bit for bit ITK's; but a chunk's halo is cut off along an axis as soon as that axis has
  been filtered, so the later passes and the eigen-analysis see only the voxels kept. Then
  the measure runs only where it can be non-zero (``candidates``: the signs of the diagonal's
  pair sums rule out the rest, ~69% of a fiber volume), on those voxels gathered into one
  row; the others are 0, as ITK would make them.
- ``objectness_whole`` (the reference the tests and the benchmark hold it to): ITK's
  ``HessianRecursiveGaussianImageFilter`` plus the same measure, on the whole volume in one call.

On one chunk the two are bit for bit equal. Chunked, the halo (9 sigma) truncates the IIR
filters' tails: differences of a few 1e-6 near the seams. Measured side by side on a
210x384x384 chunk of the bench phantom with an 18-voxel halo, one thread: ITK's Hessian filter
with the measure asked for the kept region, 27.4 CPU s; ITK's own 1-D filter in ``_TREE``'s
order with the halo cut as it goes, the measure on the screened voxels, 16.0-17.9 (the passes
11.2-13.0); the same with the compiled passes, 8.7-9.8 (the passes 3.8-3.9). All bit for bit
the same output.

A shared tree of 15 passes (z, then y, then x, each partial result reused) was ~20% cheaper
than ``_TREE``'s 17, but rounds differently from ITK's filter: on the 384^3 bench phantom that
moved one voxel across an eigenvalue tie (where ITK's measure jumps; 0.34 there) and one
segmentation voxel. Equality with ITK won.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.pipelines.microstructure.objectness import Crop, ObjectnessSpec
from consumers.pipelines.microstructure.recursive_gaussian import gaussian_pass

try:  # the wrapper modules that hold the classes used (ITK 5.x names)
    from itk.ITKCommonBasePython import itkMultiThreaderBase as _Threads
    from itk.itkHessianRecursiveGaussianImageFilterPython import (
        itkHessianRecursiveGaussianImageFilterIF3 as _Hessian,
    )
    from itk.itkHessianToObjectnessMeasureImageFilterPython import (
        itkHessianToObjectnessMeasureImageFilterISSRTD33IF3 as _Objectness,
    )
    from itk.itkPyBufferPython import itkPyBufferIF3 as _Buffer
    from itk.itkPyBufferPython import itkPyBufferISSRTD33 as _TensorBuffer
except ImportError:  # pragma: no cover - a future ITK that moved them: the slow, public path
    import itk

    _Threads = itk.MultiThreaderBase
    _Image = itk.Image[itk.F, 3]
    _TensorImage = itk.Image[itk.SymmetricSecondRankTensor[itk.D, 3], 3]
    _Hessian = itk.HessianRecursiveGaussianImageFilter[_Image]
    _Objectness = itk.HessianToObjectnessMeasureImageFilter[_TensorImage, _Image]
    _Buffer = itk.PyBuffer[_Image]
    _TensorBuffer = itk.PyBuffer[_TensorImage]

_Threads.SetGlobalDefaultNumberOfThreads(1)

#: The passes behind each Hessian component, in the order ITK's Hessian filter runs them, as
#: (array axis, derivative order): (z, y, x) = (0, 1, 2). ITK stores the tensor's upper
#: triangle row by row over its axes (x, y, z): xx, xy, xz, yy, yz, zz. For component (a, b)
#: ITK runs a's derivative first, then b's (or, on the diagonal, smoothing along the first
#: other axis), then smoothing along the rest, each pass rounded to float. Taking the passes
#: in this order makes every component bit for bit ITK's; xy and xz share their first pass.
_X, _Y, _Z = 2, 1, 0
_TREE: dict[tuple[int, int], dict[tuple[int, int], tuple[tuple[int, int, int], ...]]] = {
    (_X, 2): {(_Y, 0): ((_Z, 0, 0),)},  # xx
    (_X, 1): {(_Y, 1): ((_Z, 0, 1),), (_Z, 1): ((_Y, 0, 2),)},  # xy, xz
    (_Y, 2): {(_X, 0): ((_Z, 0, 3),)},  # yy
    (_Y, 1): {(_Z, 1): ((_X, 0, 4),)},  # yz
    (_Z, 2): {(_X, 0): ((_Y, 0, 5),)},  # zz
}


def hessian(volume: NDArray[np.float32], sigma: float, crop: Crop) -> list[NDArray[np.float32]]:
    """Scale-normalised Hessian of ``volume`` at ``sigma``, cropped: its six components in ITK's
    tensor order (xx, xy, xz, yy, yz, zz over ITK's x, y, z), each a (z, y, x) float32 array,
    equal bit for bit to ``HessianRecursiveGaussianImageFilter``'s on the kept voxels. Depth
    first down ``_TREE``, so at most one partial result per level is alive besides the parts."""
    parts: list[NDArray[np.float32] | None] = [None] * 6
    for (axis1, order1), below in _TREE.items():
        first = gaussian_pass(volume, axis1, order1, sigma, crop[axis1])
        for (axis2, order2), leaves in below.items():
            second = gaussian_pass(first, axis2, order2, sigma, crop[axis2])
            for axis3, order3, component in leaves:
                parts[component] = gaussian_pass(second, axis3, order3, sigma, crop[axis3])
            del second
        del first
    return [p for p in parts if p is not None]


def candidates(parts: list[NDArray[np.float32]], bright: bool) -> NDArray[np.bool_]:
    """Voxels whose objectness can be non-zero; everywhere else ITK's measure is exactly 0.

    With ObjectDimension 1, ITK sets the measure to 0 unless the two eigenvalues of largest
    magnitude have the object's sign (<= 0 for bright tubes). Then the two algebraically
    largest eigenvalues sum to <= 0: if the largest is positive it is the smallest in
    magnitude, so it cannot outweigh the next. By Ky Fan's inequality every sum of two diagonal
    entries (u'Hu + v'Hv for orthonormal u, v) is at most that sum. So where any of xx + yy,
    xx + zz, yy + zz is positive by more than rounding could move an eigenvalue (1e-5 of the
    entries' size, against double-precision eigenvalues), no eigen-analysis is needed. Dark
    tubes are the mirror image. On the fiber phantom this rules out ~69% of the voxels (the
    trace alone, ~62%), and the eigen-analysis is about half of ITK's filter."""
    xx, xy, xz, yy, yz, zz = parts
    if not bright:  # the mirror image: the same test on -H
        xx, yy, zz = -xx, -yy, -zz
    pairs = xx + yy
    np.maximum(pairs, xx + zz, out=pairs)
    np.maximum(pairs, yy + zz, out=pairs)
    size = np.abs(xx)
    for entry in (yy, zz):
        size += np.abs(entry)
    for entry in (xy, xz, yz):
        size += 2 * np.abs(entry)
    size *= 1e-5
    return np.asarray(pairs <= size)


def _compact_measure(parts: list[NDArray[np.float32]], spec: ObjectnessSpec) -> NDArray[np.float32]:
    """ITK's measure on the candidate voxels only, gathered into a one-row tensor image (the
    measure is voxel by voxel: a voxel's value does not depend on where it sits)."""
    shape = parts[0].shape
    where = np.flatnonzero(candidates(parts, spec.bright))
    result = np.zeros(shape, np.float32)
    if where.size == 0:
        return result
    tensor = np.empty((where.size, 6), np.float64)
    for component, part in enumerate(parts):
        tensor[:, component] = part.reshape(-1)[where]
    image = _TensorBuffer._GetImageViewFromArray(tensor, (where.size, 1, 1), 6)
    measure = _measure(spec)
    measure.SetInput(image)
    result.reshape(-1)[where] = _result(measure, (where.size,))
    del measure, image  # the image is a view of ``tensor``: it goes first
    return result


def _measure(spec: ObjectnessSpec) -> Any:
    measure = _Objectness.New()
    measure.SetObjectDimension(1)
    measure.SetBrightObject(bool(spec.bright))
    measure.SetAlpha(float(spec.alpha))
    measure.SetBeta(float(spec.beta))
    measure.SetGamma(float(spec.gamma))
    # Unscaled: the measure stays in [0, 1] whatever the intensity units, so a threshold
    # means the same on every volume.
    measure.SetScaleObjectnessMeasure(False)
    measure.SetNumberOfWorkUnits(1)
    return measure


def _result(measure: Any, shape: tuple[int, ...]) -> NDArray[np.float32]:
    measure.Update()
    view = np.asarray(_Buffer._GetArrayViewFromImage(measure.GetOutput()))
    return np.array(view.view(np.float32).reshape(shape), copy=True)  # the view dies with it


def _checked(volume: NDArray[Any], crop: Crop | None) -> tuple[NDArray[np.float32], Crop]:
    if volume.ndim != 3:
        raise ValueError(f"objectness needs a 3D array, got shape {volume.shape}")
    crop = crop or ((0, 0), (0, 0), (0, 0))
    if any(a < 0 or b < 0 or a + b >= n for (a, b), n in zip(crop, volume.shape, strict=True)):
        raise ValueError(f"crop {crop} leaves nothing of shape {volume.shape}")
    return np.ascontiguousarray(volume, dtype=np.float32), crop


def objectness(
    volume: NDArray[Any], spec: ObjectnessSpec, crop: Crop | None = None
) -> NDArray[np.float32]:
    """Objectness of a 3D array (z, y, x), the voxel-wise maximum over ``spec.sigmas``; float32
    in [0, 1]. ``crop``: voxels to leave out of the result before and after, per axis (a
    chunk's halo): the Gaussian passes see all of ``volume``, the result is the rest."""
    data, crop = _checked(volume, crop)
    result: NDArray[np.float32] | None = None
    for sigma in spec.sigmas:
        scale = _compact_measure(hessian(data, sigma, crop), spec)
        result = scale if result is None else np.maximum(result, scale, out=result)
    assert result is not None
    return result


def objectness_whole(volume: NDArray[Any], spec: ObjectnessSpec) -> NDArray[np.float32]:
    """The reference: ITK's ``HessianRecursiveGaussianImageFilter`` and the same measure, on
    all of ``volume`` in one call per sigma."""
    data, _ = _checked(volume, None)
    image = _Buffer._GetImageViewFromArray(data, data.shape[::-1], 1)
    result: NDArray[np.float32] | None = None
    for sigma in spec.sigmas:
        hessian_filter = _Hessian.New()
        hessian_filter.SetInput(image)
        hessian_filter.SetSigma(float(sigma))
        hessian_filter.SetNormalizeAcrossScale(True)
        hessian_filter.SetNumberOfWorkUnits(1)
        measure = _measure(spec)
        measure.SetInput(hessian_filter.GetOutput())
        scale = _result(measure, data.shape)
        result = scale if result is None else np.maximum(result, scale, out=result)
    assert result is not None
    del image  # a view of ``data``; drop it before ``data`` goes
    return result
