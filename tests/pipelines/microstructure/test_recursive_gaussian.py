"""Our compiled recursive Gaussian against ITK's ``RecursiveGaussianImageFilter`` itself: equal
bit for bit for every derivative order, along every axis, at small and large sigmas, on short
lines (where the boundary start-up is most of the line) and long ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from consumers.pipelines.microstructure.recursive_gaussian import coefficients, gaussian_pass

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")


def itk_pass(data: np.ndarray, axis: int, order: int, sigma: float) -> np.ndarray:
    """ITK's filter, scale-normalised like the Hessian filter's, one thread."""
    from itk.itkPyBufferPython import itkPyBufferIF3 as Buffer
    from itk.itkRecursiveGaussianImageFilterPython import (
        itkRecursiveGaussianImageFilterIF3IF3 as Gaussian,
    )

    image = Buffer._GetImageViewFromArray(data, data.shape[::-1], 1)
    gaussian: Any = Gaussian.New()
    gaussian.SetInput(image)
    gaussian.SetSigma(sigma)
    gaussian.SetDirection(2 - axis)  # ITK orders axes x, y, z
    gaussian.SetOrder(order)
    gaussian.SetNormalizeAcrossScale(True)
    gaussian.SetNumberOfWorkUnits(1)
    gaussian.Update()
    view = np.asarray(Buffer._GetArrayViewFromImage(gaussian.GetOutput()))
    return np.array(view.view(np.float32).reshape(data.shape), copy=True)


@pytest.mark.parametrize("shape", [(23, 31, 300), (4, 5, 4), (300, 6, 9)])
def test_equals_itk_bit_for_bit(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    # A step and noise: the edges exercise the boundary terms, the noise every coefficient.
    data = (rng.normal(size=shape) * 30).astype(np.float32)
    data[:, :, : shape[2] // 2] += 500
    for axis in range(3):
        for order in (0, 1, 2):
            for sigma in (0.5, 2.0, 7.3):
                ours = gaussian_pass(data, axis, order, sigma)
                theirs = itk_pass(data, axis, order, sigma)
                assert ours.dtype == np.float32
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{axis=} {order=} {sigma=}")


def test_keep_drops_the_samples_after_filtering_them() -> None:
    data = np.random.default_rng(1).normal(size=(20, 24, 28)).astype(np.float32)
    for axis in range(3):
        whole = gaussian_pass(data, axis, 2, 2.0)
        kept = gaussian_pass(data, axis, 2, 2.0, keep=(3, 5))
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(3, data.shape[axis] - 5)
        np.testing.assert_array_equal(kept, whole[tuple(index)])


def test_a_strided_input_gives_the_same_result() -> None:
    data = np.random.default_rng(2).normal(size=(16, 18, 40)).astype(np.float32)
    strided = data[:, :, ::2]
    for axis in range(3):
        np.testing.assert_array_equal(
            gaussian_pass(strided, axis, 1, 1.5), gaussian_pass(strided.copy(), axis, 1, 1.5)
        )


def test_smoothing_keeps_a_constant_and_derivatives_vanish_on_it() -> None:
    data = np.full((8, 9, 10), 3.25, np.float32)
    np.testing.assert_allclose(gaussian_pass(data, 1, 0, 2.0), 3.25, rtol=1e-6)
    for order in (1, 2):
        assert np.abs(gaussian_pass(data, 1, order, 2.0)).max() < 1e-5


def test_coefficients_are_itks_normalisations() -> None:
    # Smoothing has unit DC gain: the causal and anti-causal numerators over the feedback sum.
    c = coefficients(2.0, 0)
    n, d, m = c[0:4], c[4:8], c[8:12]
    assert (n.sum() + m.sum()) / (1 + d.sum()) == pytest.approx(1.0, rel=1e-12)
    # Scale normalisation multiplies the k-th derivative by sigma^k.
    for order in (1, 2):
        plain, scaled = coefficients(2.0, order, False), coefficients(2.0, order, True)
        assert scaled[1] / plain[1] == pytest.approx(2.0**order, rel=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gaussian_pass(np.zeros((3, 8, 8), np.float32), 0, 0, 1.0), "needs 4 samples"),
        (lambda: gaussian_pass(np.zeros((8, 8, 8), np.float64), 0, 0, 1.0), "float32"),
        (lambda: gaussian_pass(np.zeros((8, 8, 8), np.float32), 0, 0, 1.0, (4, 4)), "nothing"),
        (lambda: coefficients(0.0, 0), "sigma"),
        (lambda: coefficients(1.0, 3), "order"),
    ],
)
def test_bad_arguments_are_refused(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
