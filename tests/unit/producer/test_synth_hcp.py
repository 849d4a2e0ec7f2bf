from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.io.gradients import read_bvals_bvecs
from dipy.reconst.dti import TensorModel

from producer.synth import gradients, hcp
from producer.synth.anatomy import WM_LABELS, Anatomy
from shared.errors import InvalidInput
from shared.store import LocalStore, ObjectInfo

HCP_KEYS = [
    "100307/T1w/Diffusion/bvals",
    "100307/T1w/Diffusion/bvecs",
    "100307/T1w/Diffusion/data.nii.gz",
    "100307/T1w/Diffusion/nodif_brain_mask.nii.gz",
    "100307/T1w/aparc+aseg.nii.gz",
]


@pytest.fixture(scope="module")
def small() -> hcp.SyntheticSubject:
    return hcp.make_subject("small", seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ObjectInfo]]:
    root = tmp_path_factory.mktemp("synth")
    infos = hcp.write_subject(LocalStore(root), "100307", "small", seed=0)
    return root, infos


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _labels_on_dwi_grid(subject: hcp.SyntheticSubject) -> np.ndarray:
    """Nearest-neighbour resampling of aparc to the diffusion grid through world coordinates."""
    ijk = np.indices(subject.data.shape[:3]).reshape(3, -1)
    world = subject.dwi_affine[:3, :3] @ ijk + subject.dwi_affine[:3, 3:]
    t1_inv = np.linalg.inv(subject.t1_affine)
    t1_ijk = np.rint(t1_inv[:3, :3] @ world + t1_inv[:3, 3:]).astype(int)
    for axis, n in enumerate(subject.aparc.shape):
        assert t1_ijk[axis].min() >= 0 and t1_ijk[axis].max() < n  # same field of view
    return subject.aparc[tuple(t1_ijk)].reshape(subject.data.shape[:3])


def test_written_files_are_the_hcp_layout(
    written: tuple[Path, list[ObjectInfo]], small: hcp.SyntheticSubject
) -> None:
    root, infos = written
    store = LocalStore(root)
    assert sorted(store.list()) == HCP_KEYS
    assert sorted(i.key for i in infos) == HCP_KEYS
    assert all(i.bytes == store.size(i.key) for i in infos)

    diff = root / "100307/T1w/Diffusion"
    img = nib.load(diff / "data.nii.gz")
    assert img.shape == (30, 36, 30, 147)
    assert img.get_data_dtype() == np.float32
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.affine, small.dwi_affine)
    # Streamed volume by volume, yet identical to the series built in memory.
    np.testing.assert_array_equal(np.asarray(img.dataobj), small.data)

    mask = nib.load(diff / "nodif_brain_mask.nii.gz")
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.dataobj), small.brain_mask)

    aparc = nib.load(root / "100307/T1w/aparc+aseg.nii.gz")
    assert aparc.shape == (52, 62, 52) and aparc.get_data_dtype() == np.int32
    np.testing.assert_allclose(aparc.affine, small.t1_affine)
    np.testing.assert_array_equal(np.asarray(aparc.dataobj), small.aparc)

    assert (diff / "bvals").read_text().count("\n") == 1
    assert (diff / "bvecs").read_text().count("\n") == 3
    bvals, bvecs = read_bvals_bvecs(str(diff / "bvals"), str(diff / "bvecs"))
    assert bvals.shape == (147,) and bvecs.shape == (147, 3)
    np.testing.assert_array_equal(bvals, small.bvals)
    np.testing.assert_allclose(bvecs, small.bvecs.T, atol=1e-6)
    dw = bvals > 0
    np.testing.assert_allclose(np.linalg.norm(bvecs[dw], axis=1), 1.0, atol=1e-5)
    assert not bvecs[~dw].any()
    gtab = gradient_table(bvals, bvecs=bvecs)
    assert gtab.b0s_mask.sum() == 3
    assert sorted(set(np.round(gtab.bvals[dw]).tolist())) == [1000, 2000, 3000]


def test_same_seed_same_bytes_other_seed_other_noise(
    tmp_path: Path, written: tuple[Path, list[ObjectInfo]]
) -> None:
    root, infos = written
    again = hcp.write_subject(LocalStore(tmp_path / "a"), "100307", "small", seed=0)
    assert [(i.key, i.sha256) for i in again] == [(i.key, i.sha256) for i in infos]

    other = hcp.write_subject(LocalStore(tmp_path / "b"), "100307", "small", seed=1)
    data_key = "100307/T1w/Diffusion/data.nii.gz"
    assert {i.key: i.sha256 for i in other}[data_key] != {i.key: i.sha256 for i in infos}[data_key]
    a = np.asarray(nib.load(root / data_key).dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / data_key).dataobj)
    background = a[0, 0, 0] - b[0, 0, 0]  # a corner: noise only, in both subjects
    assert np.abs(background).mean() > 1.0
    # gzip members carry no file name or mtime, so byte identity is not luck of timing.
    raw = (root / data_key).read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08


def test_anatomy_labels_line_up_with_dwi_white_matter(small: hcp.SyntheticSubject) -> None:
    labels = set(np.unique(small.aparc).tolist())
    assert WM_LABELS.issubset(labels)
    assert {0, 4, 43, 10, 49, 24} <= labels
    cortex = {lab for lab in labels if 1000 <= lab <= 2035}
    assert len([c for c in cortex if c < 2000]) >= 30 and len([c for c in cortex if c > 2000]) >= 30

    on_dwi = _labels_on_dwi_grid(small)
    wm_from_labels = np.isin(on_dwi, list(WM_LABELS))
    assert _dice(wm_from_labels, small.truth["wm_mask"]) > 0.8
    # Hemispheres are RAS: left labels at negative x.
    x = small.dwi_affine[0, 0] * np.indices(on_dwi.shape)[0] + small.dwi_affine[0, 3]
    assert np.median(x[on_dwi == 2]) < 0 < np.median(x[on_dwi == 41])
    assert _dice(small.brain_mask.astype(bool), on_dwi > 0) > 0.9


def test_tensor_fit_sees_fibres_and_isotropic_tissue(small: hcp.SyntheticSubject) -> None:
    truth = small.truth
    shell = small.bvals <= 1000
    gtab = gradient_table(small.bvals[shell], bvecs=small.bvecs[:, shell].T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = TensorModel(gtab).fit(small.data[..., shell], mask=small.brain_mask > 0)
    fa = fit.fa
    single = truth["wm_mask"] & (truth["n_fibers"] == 1) & (truth["wm_fraction"] > 0.9)
    crossing = truth["n_fibers"] >= 2
    isotropic = (truth["gm_fraction"] + truth["csf_fraction"]) > 0.9
    assert single.sum() > 1000 and crossing.sum() > 20 and isotropic.sum() > 200
    assert np.median(fa[single]) > 0.4
    assert np.median(fa[isotropic]) < 0.2
    assert np.median(fa[crossing]) < np.median(fa[single])  # two populations flatten the tensor
    # The principal eigenvector follows the single fibre.
    cos = np.abs((fit.evecs[..., 0] * truth["fiber_dirs"][..., 0, :]).sum(-1))
    assert np.median(cos[single]) > 0.95
    # Outside the brain there is only noise: Rayleigh with the stated sigma.
    outside = small.data[0, 0, :, 0]
    assert 0.5 * truth["sigma"] < outside.mean() < 2 * truth["sigma"]


def test_small_supports_csd_order_8(small: hcp.SyntheticSubject) -> None:
    for shell in (1000, 2000, 3000):
        vecs = small.bvecs[:, small.bvals == shell].T
        assert len(vecs) >= 45
        cos = np.abs(vecs @ vecs.T)
        np.fill_diagonal(cos, 0)
        assert np.degrees(np.arccos(cos.max())) > 10  # no two directions nearly the same axis


def test_bad_inputs_raise_invalid_input(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(InvalidInput, match="size"):
        hcp.make_subject("huge")
    with pytest.raises(InvalidInput, match="size"):
        hcp.write_subject(store, "100307", "huge")
    for bad in ("../up", "a/b", "", ".hidden"):
        with pytest.raises(InvalidInput):
            hcp.write_subject(store, bad)
    with pytest.raises(InvalidInput, match="seed"):
        hcp.make_subject("small", seed=-1)
    with pytest.raises(InvalidInput):
        hcp.write_subjects(store, ["100307", "../x"])
    assert list(store.list()) == []  # ids are all checked before anything is written


def test_write_subjects_names_and_progress(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    seen: list[int] = []
    ids = hcp.write_subjects(store, 2, "small", seed=3, progress=seen.append)
    assert ids == ["100000", "100001"] and seen == [1, 2]
    assert len(list(store.list())) == 2 * len(HCP_KEYS)
    first = gzip.decompress((tmp_path / "100000/T1w/Diffusion/data.nii.gz").read_bytes())
    second = gzip.decompress((tmp_path / "100001/T1w/Diffusion/data.nii.gz").read_bytes())
    assert first[352:] != second[352:]
    # A subject's seed depends on its id and the cohort seed, not on its place in the list.
    assert hcp.subject_seed("100001", 3) != hcp.subject_seed("100000", 3)
    assert hcp.subject_seed("100001", 3) != hcp.subject_seed("100001", 4)


def test_hcp_spec_and_gradient_table() -> None:
    spec = hcp.SIZES["hcp"]
    assert spec.shape == (145, 174, 145) and spec.voxel_mm == 1.25
    assert spec.t1_shape == (260, 311, 260) and spec.t1_voxel_mm == 0.7
    assert spec.n_volumes == 288
    bvals, bvecs = gradients.gradient_scheme(spec.shells, spec.dirs_per_shell, spec.n_b0)
    assert bvals.shape == (288,) and bvecs.shape == (3, 288)
    assert (bvals == 0).sum() == 18 and bvals[0] == 0
    for shell in (1000, 2000, 3000):
        assert (bvals == shell).sum() == 90
    gtab = gradient_table(bvals, bvecs=bvecs.T)
    assert gtab.b0s_mask.sum() == 18
    # b0s interleaved through the series, as HCP acquires them.
    assert np.diff(np.flatnonzero(bvals == 0)).max() <= 16
    # Both grids cover the same field of view, centred on world 0.
    for affine, shape in ((spec.dwi_affine, spec.shape), (spec.t1_affine, spec.t1_shape)):
        centre = affine @ np.r_[(np.asarray(shape) - 1) / 2, 1]
        np.testing.assert_allclose(centre[:3], 0, atol=1e-9)
    dwi_fov = np.asarray(spec.shape) * spec.voxel_mm
    t1_fov = np.asarray(spec.t1_shape) * spec.t1_voxel_mm
    np.testing.assert_allclose(dwi_fov, t1_fov, atol=1.0)
    medium = hcp.SIZES["medium"]
    assert medium.n_volumes == 96 and medium.voxel_mm == 2 * spec.voxel_mm


def test_slabs_agree_with_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anatomy is pointwise, so the x-slab size used for memory never changes a voxel."""
    whole = hcp.Phantom("small", seed=5)
    monkeypatch.setattr(hcp, "_SLAB_POINTS", 1)  # one plane per slab
    sliced = hcp.Phantom("small", seed=5)
    for name, arr in whole.fields.items():
        np.testing.assert_array_equal(arr, sliced.fields[name], err_msg=name)
    np.testing.assert_array_equal(whole.volume(7), sliced.volume(7))
    # The hcp grid, a few planes through the middle: white matter and crossings are resolved.
    anatomy = Anatomy.from_seed(0)
    spec = hcp.SIZES["hcp"]
    mid = hcp.tissue_slab(anatomy, spec, 72, 73)
    assert mid.wm.shape == (174 * 145,)
    planes = [hcp.tissue_slab(anatomy, spec, x, x + 1) for x in (95, 96)]
    pair = hcp.tissue_slab(anatomy, spec, 95, 97)
    np.testing.assert_array_equal(np.concatenate([p.dirs for p in planes]), pair.dirs)
    assert (mid.wm > 0.5).sum() > 3000
    assert ((pair.fracs > 0).sum(-1)[pair.wm > 0.5] >= 2).sum() > 100
