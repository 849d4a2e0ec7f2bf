"""Every way a diffusion input can be wrong ends in a one-line InvalidInput naming the problem
(an HCP subject here; the other layouts share the loader, see test_layouts_load.py)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from consumers.pipelines.diffusion import nifti, subject, white_matter
from shared.errors import InvalidInput, MissingInput
from shared.layouts.hcp import APARC_KEY, HcpLayout
from shared.settings import Settings
from shared.store import LocalStore

DIFF = Path("T1w/Diffusion")


def _load(root: Path, workdir: Path, settings: Settings | None = None) -> subject.Subject:
    store = LocalStore(root)
    files = HcpLayout().files(store, "")
    return subject.load_subject(store, files, workdir, settings or Settings(), b0_threshold=50)


def _delete(name: str) -> Callable[[Path], None]:
    return lambda root: (root / DIFF / name).unlink()


def _truncate(root: Path) -> None:
    path = root / DIFF / "data.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _garbage(root: Path) -> None:
    (root / DIFF / "data.nii.gz").write_bytes(bytes(range(256)) * 40)


def _garbage_in_gzip(root: Path) -> None:
    # A valid gzip stream whose content is not NIfTI.
    (root / DIFF / "data.nii.gz").write_bytes(gzip.compress(b"not a nifti header " * 100))


def _text(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / DIFF / name).write_text(text)


def _bvals_with(value: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / DIFF / "bvals"
        values = path.read_text().split()
        values[5] = value
        path.write_text(" ".join(values) + "\n")

    return mutate


def _no_b0(raw: Any) -> dict[str, Any]:
    bvals, bvecs = raw.bvals.copy(), raw.bvecs.copy()
    bvals[bvals < 50] = 1000.0
    bvecs[:, ~np.isfinite(bvecs).all(axis=0)] = [[1.0], [0.0], [0.0]]  # a b0's NaN direction
    return {"bvals": bvals, "bvecs": bvecs}


def _unnormalised_bvecs(raw: Any) -> dict[str, Any]:
    bvecs = raw.bvecs.copy()
    bvecs[:, 5] *= 3.0
    return {"bvecs": bvecs}


def _patched_header(name: str, patch: Callable[[bytearray], None]) -> Callable[[Path], None]:
    """Edit the stored NIfTI-1 header bytes of ``name`` (nibabel would fix them on save)."""

    def mutate(root: Path) -> None:
        path = next(root.rglob(name))
        raw = bytearray(gzip.decompress(path.read_bytes()))
        patch(raw)
        path.write_bytes(gzip.compress(bytes(raw)))

    return mutate


def _pixdim(axis: int, value: float) -> Callable[[bytearray], None]:
    def patch(raw: bytearray) -> None:
        struct.pack_into("<f", raw, 76 + 4 * axis, value)  # pixdim[axis]

    return patch


def _singular_sform(raw: bytearray) -> None:
    struct.pack_into("<hh", raw, 252, 0, 1)  # qform_code 0, sform_code 1: the sform decides
    struct.pack_into("<4f", raw, 296, 0.0, 0.0, 0.0, 0.0)  # srow_y: every voxel at y = 0


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


# (id, overrides from the raw subject, mutation of the written files, settings, message regex)
CASES: list[tuple[str, Any, Any, dict[str, Any], str]] = [
    ("missing-data", None, _delete("data.nii.gz"), {}, r"missing input .*data\.nii\.gz"),
    ("missing-bvals", None, _delete("bvals"), {}, r"missing input .*T1w/Diffusion/bvals"),
    ("missing-bvecs", None, _delete("bvecs"), {}, r"missing input .*bvecs"),
    ("missing-mask", None, _delete("nodif_brain_mask.nii.gz"), {}, r"missing .*nodif_brain_mask"),
    ("truncated-data", None, _truncate, {}, r"data\.nii\.gz is corrupt or truncated"),
    ("garbage-data", None, _garbage, {}, r"data\.nii\.gz is not a readable NIfTI"),
    ("garbage-gzip", None, _garbage_in_gzip, {}, r"data\.nii\.gz is not a readable NIfTI"),
    ("empty-data", None, _text("data.nii.gz", ""), {}, r"data\.nii\.gz is empty"),
    ("dwi-3d", lambda r: {"data": r.data[..., 0]}, None, {}, r"must be 4D .* got 3D"),
    (
        "bvals-count",
        lambda r: {"bvals": r.bvals[:-1]},
        None,
        {},
        r"bvals has 64 values but .*data\.nii\.gz has 65 volumes",
    ),
    (
        "bvecs-count",
        lambda r: {"bvecs": r.bvecs[:, :-2]},
        None,
        {},
        r"bvecs has 63 directions but .* 65 volumes",
    ),
    (
        "bvecs-not-3xN",
        lambda r: {"bvecs": np.vstack([r.bvecs, r.bvecs[:1]])},
        None,
        {},
        r"bvecs must be 3xN \(or Nx3\), got 4x65",
    ),
    ("bvecs-ragged", None, _text("bvecs", "1 0 0\n0 1\n"), {}, r"bvecs is not a table of numbers"),
    ("bvals-nan", None, _bvals_with("nan"), {}, r"bvals contains NaN or infinite"),
    ("bvals-inf", None, _bvals_with("inf"), {}, r"bvals contains NaN or infinite"),
    ("bvals-text", None, _bvals_with("abc"), {}, r"bvals is not a table of numbers"),
    ("bvals-negative", None, _bvals_with("-5"), {}, r"negative b-values"),
    (
        "bvecs-nan",
        lambda r: {"bvecs": np.where(np.arange(65) == 7, np.nan, r.bvecs)},
        None,
        {},
        r"bvecs contains NaN or infinite values for 1 diffusion-weighted volume\(s\), the first "
        r"being volume 7 \(b=",
    ),
    (
        "bvecs-not-unit",
        _unnormalised_bvecs,
        None,
        {},
        r"bvecs: the direction of volume 5 \(b=[\d.]+\) has length 3, not 1",
    ),
    ("no-b0", _no_b0, None, {}, r"no b0 volume"),
    (
        "mask-shape",
        lambda r: {"mask": r.mask[:, :, :-1]},
        None,
        {},
        r"nodif_brain_mask\.nii\.gz has shape \(10, 10, 9\) but .* \(10, 10, 10\)",
    ),
    (
        "mask-grid",
        lambda r: {"mask_affine": r.affine + _shift(5.0)},
        None,
        {},
        r"nodif_brain_mask\.nii\.gz is not on the same grid",
    ),
    ("mask-empty", lambda r: {"mask": np.zeros_like(r.mask)}, None, {}, r"is empty \(no brain"),
    (
        "zero-voxel-size",
        None,
        _patched_header("data.nii.gz", _pixdim(3, 0.0)),
        {},
        r"data\.nii\.gz has voxel sizes 2, 2, 0 \(pixdim\); each must be above 0",
    ),
    (
        "negative-voxel-size",
        None,
        _patched_header("nodif_brain_mask.nii.gz", _pixdim(1, -2.0)),
        {},
        r"nodif_brain_mask\.nii\.gz has voxel sizes -2, 2, 2",
    ),
    (
        "singular-affine",
        None,
        _patched_header("data.nii.gz", _singular_sform),
        {},
        r"data\.nii\.gz has a singular affine",
    ),
    ("too-many-voxels", None, None, {"max_voxels": 10}, r"1000 voxels .* above the limit of 10"),
    ("too-many-volumes", None, None, {"max_volumes": 10}, r"65 volumes, above the limit of 10"),
    ("too-many-bytes", None, None, {"max_input_bytes": 1000}, r"above the 1000-byte input limit"),
    (
        "too-many-bytes-dwi",
        None,
        None,
        {"max_input_bytes": 5000},
        r"data\.nii\.gz is \d+ bytes, above the 5000-byte input limit",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "mutate", "limits", "pattern"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_one_line_invalid_input(
    tmp_path: Path,
    hcp_subject: Callable[..., Path],
    small64d: Any,
    overrides: Callable[[Any], dict[str, Any]] | None,
    mutate: Callable[[Path], None] | None,
    limits: dict[str, Any],
    pattern: str,
) -> None:
    root = hcp_subject(**(overrides(small64d) if overrides else {}))
    if mutate:
        mutate(root)
    with pytest.raises(InvalidInput, match=pattern) as info:
        _load(root, tmp_path / "work", Settings(**limits))
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    assert str(tmp_path / "work") not in message  # scratch paths mean nothing to a user
    if pattern.startswith("missing"):
        assert isinstance(info.value, MissingInput)
        assert str(root) in message  # the full URI, so the user can go and look


def test_good_subject_loads(
    tmp_path: Path, hcp_subject: Callable[..., Path], small64d: Any
) -> None:
    loaded = _load(hcp_subject(), tmp_path / "work")
    assert loaded.mask_source == "layout"
    assert loaded.data.dtype == np.float32 and loaded.data.shape == (10, 10, 10, 65)
    np.testing.assert_array_equal(loaded.data, small64d.data.astype(np.float32))
    assert loaded.mask.dtype == np.bool_ and loaded.mask.sum() == small64d.mask.sum()
    np.testing.assert_allclose(loaded.affine, small64d.affine, atol=1e-5)
    assert loaded.zooms == pytest.approx((2.0, 2.0, 2.0))
    assert loaded.gtab.b0s_mask.sum() == 1
    # small_64D writes a NaN direction for its b0; harmless there, so it becomes zero.
    assert np.isnan(small64d.bvecs[:, 0]).all()
    np.testing.assert_array_equal(loaded.gtab.bvecs[0], [0.0, 0.0, 0.0])
    assert loaded.nonfinite_values == 0
    # The scratch copies are removed once their voxels are in memory.
    assert not list((tmp_path / "work").rglob("*.nii.gz"))


def test_nx3_bvecs_are_accepted(
    tmp_path: Path, hcp_subject: Callable[..., Path], small64d: Any
) -> None:
    loaded = _load(hcp_subject(bvecs=small64d.bvecs.T), tmp_path / "w")
    np.testing.assert_allclose(loaded.gtab.bvecs, np.nan_to_num(small64d.bvecs.T), atol=1e-6)


def test_read_labels(tmp_path: Path) -> None:
    affine = np.diag([0.7, 0.7, 0.7, 1.0])
    labels = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    (tmp_path / "T1w").mkdir()
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / APARC_KEY)
    got, got_affine = nifti.read_labels(
        LocalStore(tmp_path), APARC_KEY, tmp_path / "work", Settings()
    )
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, labels.astype(np.int32))
    np.testing.assert_allclose(got_affine, affine, atol=1e-6)

    nib.save(nib.Nifti1Image(labels + 0.5, affine), tmp_path / APARC_KEY)
    with pytest.raises(InvalidInput, match="non-integer labels"):
        nifti.read_labels(LocalStore(tmp_path), APARC_KEY, tmp_path / "work", Settings())
    with pytest.raises(MissingInput, match=r"aparc\+aseg"):
        nifti.read_labels(LocalStore(tmp_path / "no"), APARC_KEY, tmp_path / "work", Settings())


def _brute_force_nearest(
    labels: np.ndarray, l_aff: np.ndarray, shape: tuple[int, int, int], t_aff: np.ndarray
) -> np.ndarray:
    """Independent reference: nearest label-voxel centre by explicit distance, fill 0 when the
    target centre lies outside every label voxel."""
    centres = np.stack(np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij"), -1)
    world = centres.reshape(-1, 3) @ l_aff[:3, :3].T + l_aff[:3, 3]
    half = np.abs(np.diag(l_aff)[:3]) / 2
    out = np.zeros(shape, dtype=np.int32)
    for ijk in np.ndindex(*shape):
        p = t_aff[:3, :3] @ np.array(ijk, float) + t_aff[:3, 3]
        best = int(np.argmin(((world - p) ** 2).sum(axis=1)))
        if (np.abs(world[best] - p) <= half + 1e-9).all():
            out[ijk] = labels.reshape(-1)[best]
    return out


def test_resample_labels_half_voxel_grid() -> None:
    # Labels at 1 mm, diffusion at 2 mm over the same origin: target voxel i sits on label 2i.
    labels = np.arange(8 * 10 * 12, dtype=np.int32).reshape(8, 10, 12)
    l_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    t_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    out = white_matter.resample_labels_nearest(labels, l_aff, (4, 5, 6), t_aff)
    np.testing.assert_array_equal(out, labels[::2, ::2, ::2])


def test_resample_labels_flipped_shifted_and_outside() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 50, size=(9, 11, 7)).astype(np.int32)
    # Label grid stored with x flipped (LAS-like) and shifted by a non-half amount (no ties).
    l_aff = np.array([[-1.0, 0, 0, 8.3], [0, 1.0, 0, -0.4], [0, 0, 1.0, 0.2], [0, 0, 0, 1]])
    # A coarser target that also pokes outside the label grid on every side.
    t_aff = np.array([[2.0, 0, 0, -1.1], [0, 2.0, 0, -2.7], [0, 0, 2.0, -1.9], [0, 0, 0, 1]])
    shape = (6, 8, 6)
    out = white_matter.resample_labels_nearest(labels, l_aff, shape, t_aff)
    expected = _brute_force_nearest(labels, l_aff, shape, t_aff)
    np.testing.assert_array_equal(out, expected)
    assert (out == 0).any() and (out != 0).any()
