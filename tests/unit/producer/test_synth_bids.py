from __future__ import annotations

import gzip
import hashlib
import json
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.data import default_sphere
from dipy.io.gradients import read_bvals_bvecs
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, response_from_mask_ssst
from typer.testing import CliRunner

from producer.synth import bids, hcp
from producer.synth.anatomy import WM_LABELS
from producer.synth.bids import BidsSubject
from shared.errors import InvalidInput
from shared.store import LocalStore

# pybids is not installed, so the BIDS entities of every written name are checked here: labels
# alphanumeric, entities in the spec's order (sub, ses, run, space, desc), the ses- folder and
# the ses- entity present together ((?(ses)...) is a conditional on the folder's group).
_L = r"[A-Za-z0-9]+"
_DIR = rf"sub-(?P<sub>{_L})/(?:ses-(?P<ses>{_L})/)?"
_STEM = r"sub-(?P=sub)(?(ses)_ses-(?P=ses))"
RAW = {
    "dwi": re.compile(rf"^{_DIR}dwi/{_STEM}(?:_run-[0-9]+)?_dwi\.(?:nii\.gz|bval|bvec|json)$"),
    "anat": re.compile(rf"^{_DIR}anat/{_STEM}_T1w\.nii\.gz$"),
}
QSI = {
    "dwi": re.compile(
        rf"^{_DIR}dwi/{_STEM}(?:_run-[0-9]+)?_space-(?P<space>T1w|ACPC)_"
        r"(?:desc-preproc_dwi\.(?:nii\.gz|bval|bvec|json)|desc-brain_mask\.nii\.gz)$"
    ),
    "anat": re.compile(
        rf"^sub-(?P<sub>{_L})/anat/sub-(?P=sub)(?:_space-ACPC)?_"
        r"(?:desc-preproc_T1w|desc-brain_mask|desc-aseg_dseg|dseg)\.nii\.gz$"
    ),
}
RAW_TOP = ["README", "dataset_description.json", "participants.json", "participants.tsv"]

RAW_COHORT = [
    BidsSubject("01", sessions=("pre", "post"), runs=2),
    BidsSubject("02", multishell=True),
    BidsSubject("03", broken="no-bval"),
    BidsSubject("04", broken="no-dwi"),
    BidsSubject("05", broken="zero-voxel-size"),
    BidsSubject("06", broken="singular-affine"),
]
QSI_COHORT = [BidsSubject("01", runs=2), BidsSubject("02", segmentation=False, multishell=True)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("bids")
    return root, bids.write_bids(LocalStore(root), RAW_COHORT, "small", layout="bids", seed=0)


@pytest.fixture(scope="module")
def qsiprep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("qsiprep")
    return root, bids.write_bids(LocalStore(root), QSI_COHORT, "small", layout="qsiprep", seed=0)


@pytest.fixture(scope="module")
def hcp01() -> hcp.SyntheticSubject:
    """What ``synth hcp`` makes for subject id "01" with cohort seed 0."""
    return hcp.make_subject("small", hcp.subject_seed("01", 0))


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _keys(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_raw_bids_names_and_dataset_files(raw: tuple[Path, list[str]]) -> None:
    root, dwi_keys = raw
    keys = _keys(root)
    sub_keys = [k for k in keys if k not in RAW_TOP]
    assert sorted(set(keys) - set(sub_keys)) == RAW_TOP
    for key in sub_keys:
        assert any(p.match(key) for p in RAW.values()), key
    assert not [k for k in keys if "mask" in k]  # raw BIDS: the consumer computes its own
    assert dwi_keys == [
        "sub-01/ses-pre/dwi/sub-01_ses-pre_run-1_dwi.nii.gz",
        "sub-01/ses-pre/dwi/sub-01_ses-pre_run-2_dwi.nii.gz",
        "sub-01/ses-post/dwi/sub-01_ses-post_run-1_dwi.nii.gz",
        "sub-01/ses-post/dwi/sub-01_ses-post_run-2_dwi.nii.gz",
        "sub-02/dwi/sub-02_dwi.nii.gz",  # one run: no run entity
        "sub-03/dwi/sub-03_dwi.nii.gz",
        "sub-05/dwi/sub-05_dwi.nii.gz",
        "sub-06/dwi/sub-06_dwi.nii.gz",
    ]
    assert "sub-01/ses-post/anat/sub-01_ses-post_T1w.nii.gz" in keys
    assert "sub-02/anat/sub-02_T1w.nii.gz" in keys

    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
    assert desc["Name"] and desc["License"] and isinstance(desc["Authors"], list)
    rows = [line.split("\t") for line in (root / "participants.tsv").read_text().splitlines()]
    assert rows[0] == ["participant_id", "seed"]
    assert [r[0] for r in rows[1:]] == [f"sub-0{i}" for i in range(1, 7)]
    assert set(json.loads((root / "participants.json").read_text())) == {"participant_id", "seed"}

    sidecar = json.loads((root / "sub-02/dwi/sub-02_dwi.json").read_text())
    assert sidecar["PhaseEncodingDirection"] in {"i", "i-", "j", "j-", "k", "k-"}
    assert 0.01 < sidecar["TotalReadoutTime"] < 0.2 and 0.03 < sidecar["EchoTime"] < 0.15
    zooms = nib.load(root / "sub-02/dwi/sub-02_dwi.nii.gz").header.get_zooms()
    assert sidecar["RepetitionTime"] == pytest.approx(float(zooms[3]))  # the validator checks it


def test_dwi_is_the_hcp_subject_bit_for_bit(
    raw: tuple[Path, list[str]], hcp01: hcp.SyntheticSubject
) -> None:
    root, _ = raw
    keep = bids.shell_volumes(hcp01.bvals, (1000,))
    assert len(keep) == 3 + 48 and hcp01.bvals[keep].max() == 1000
    first = nib.load(root / "sub-01/ses-pre/dwi/sub-01_ses-pre_run-1_dwi.nii.gz")
    assert first.get_data_dtype() == np.float32
    np.testing.assert_array_equal(first.affine, hcp01.dwi_affine)
    np.testing.assert_array_equal(np.asarray(first.dataobj), hcp01.data[..., keep])
    t1 = nib.load(root / "sub-01/ses-pre/anat/sub-01_ses-pre_T1w.nii.gz")
    np.testing.assert_array_equal(t1.affine, hcp01.t1_affine)
    assert t1.shape == hcp01.aparc.shape

    # Every other acquisition: the same brain, its own noise (reproducible from its name).
    second = _data(root / "sub-01/ses-pre/dwi/sub-01_ses-pre_run-2_dwi.nii.gz")
    assert not np.array_equal(second, hcp01.data[..., keep])
    ph = hcp.Phantom("small", hcp.subject_seed("01", 0))
    rescan = ph.with_noise(hcp.subject_seed("sub-01_ses-pre_run-2", 0))
    flat = rescan.volume(keep[5]).reshape(ph.spec.shape, order="F")
    np.testing.assert_array_equal(second[..., 5], flat)
    brain = hcp01.brain_mask > 0
    b0_first, b0_second = hcp01.data[..., 0][brain].mean(), second[..., 0][brain].mean()
    assert abs(b0_first - b0_second) < 0.01 * b0_first
    # ph.with_noise shares the anatomy and leaves the original's noise alone.
    np.testing.assert_array_equal(
        ph.volume(0).reshape(ph.spec.shape, order="F"), first.dataobj[..., 0]
    )


def test_bval_bvec_parse_with_dipy_and_match(
    raw: tuple[Path, list[str]], hcp01: hcp.SyntheticSubject
) -> None:
    root, dwi_keys = raw
    for key in dwi_keys:
        base = root / key.removesuffix(".nii.gz")
        if key.startswith("sub-03/"):
            continue  # no-bval
        assert base.with_suffix(".bval").read_text().count("\n") == 1
        assert base.with_suffix(".bvec").read_text().count("\n") == 3
        bvals, bvecs = read_bvals_bvecs(
            str(base.with_suffix(".bval")), str(base.with_suffix(".bvec"))
        )
        n = nib.load(root / key).shape[3]
        assert bvals.shape == (n,) and bvecs.shape == (n, 3)
        shells = sorted(set(bvals.tolist()))
        assert shells == ([0, 1000, 2000] if key.startswith("sub-02/") else [0, 1000])
        dw = bvals > 0
        np.testing.assert_allclose(np.linalg.norm(bvecs[dw], axis=1), 1.0, atol=1e-5)
        assert not bvecs[~dw].any()
    keep = bids.shell_volumes(hcp01.bvals, (1000,))
    base = root / "sub-01/ses-post/dwi/sub-01_ses-post_run-1_dwi"
    bvals, bvecs = read_bvals_bvecs(str(base.with_suffix(".bval")), str(base.with_suffix(".bvec")))
    np.testing.assert_array_equal(bvals, hcp01.bvals[keep])
    np.testing.assert_allclose(bvecs, hcp01.bvecs[:, keep].T, atol=1e-6)


def test_multishell_fits_csd_on_either_shell(raw: tuple[Path, list[str]]) -> None:
    root, _ = raw
    base = root / "sub-02/dwi/sub-02_dwi"
    data = _data(base.with_suffix(".nii.gz"))
    bvals, bvecs = read_bvals_bvecs(str(base.with_suffix(".bval")), str(base.with_suffix(".bvec")))
    truth = hcp.Phantom("small", hcp.subject_seed("02", 0)).truth()
    single = truth["wm_mask"] & (truth["n_fibers"] == 1) & (truth["wm_fraction"] > 0.95)
    picked = np.zeros_like(single)
    picked[tuple(np.argwhere(single)[::8].T)] = True  # a spread-out few hundred voxels
    assert 100 < picked.sum() < 1000
    for shell in (1000, 2000):
        sel = (bvals == 0) | (bvals == shell)
        gtab = gradient_table(bvals[sel], bvecs=bvecs[sel])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            response, _ = response_from_mask_ssst(gtab, data[..., sel], single)
            fit = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8).fit(
                data[..., sel][picked]
            )
            odf = fit.odf(default_sphere)
        assert response[0][0] > 2.5 * response[0][1]  # a prolate single-fibre response
        peaks = default_sphere.vertices[np.argmax(odf, axis=-1)]
        cos = np.abs((peaks * truth["fiber_dirs"][picked][:, 0, :]).sum(-1))
        assert np.median(cos) > 0.95, shell


def test_broken_variants_are_broken_as_named(raw: tuple[Path, list[str]]) -> None:
    root, _ = raw
    keys = _keys(root)
    no_bval = root / "sub-03/dwi/sub-03_dwi"
    assert not no_bval.with_suffix(".bval").exists()
    assert no_bval.with_suffix(".bvec").exists() and no_bval.with_suffix(".json").exists()
    assert [k for k in keys if k.startswith("sub-04/")] == ["sub-04/anat/sub-04_T1w.nii.gz"]

    path = root / "sub-05/dwi/sub-05_dwi.nii.gz"
    with gzip.open(path) as raw_file:
        on_disk = nib.Nifti1Header.from_fileobj(raw_file, check=False)
    assert [float(z) for z in on_disk["pixdim"][1:5]] == [6.0, 6.0, 0.0, pytest.approx(hcp.TR_S)]
    assert tuple(on_disk.get_data_shape()) == (30, 36, 30, 51)
    # nibabel repairs it on load (to 1 mm, with a warning): the fault is in the file, not in
    # what every reader sees; the sform still holds the real grid.
    zero = nib.load(path)
    assert float(zero.header.get_zooms()[2]) == 1.0
    np.testing.assert_array_equal(zero.affine, hcp.SIZES["small"].dwi_affine)

    singular = nib.load(root / "sub-06/dwi/sub-06_dwi.nii.gz")
    assert np.linalg.matrix_rank(singular.affine[:3, :3]) == 2
    assert int(singular.header["qform_code"]) == 0 and int(singular.header["sform_code"]) == 1
    assert singular.shape == (30, 36, 30, 51)
    # Only the DWI is broken: its anatomy is fine.
    t1 = nib.load(root / "sub-06/anat/sub-06_T1w.nii.gz")
    assert np.linalg.matrix_rank(t1.affine[:3, :3]) == 3


def test_qsiprep_derivative_layout(
    qsiprep: tuple[Path, list[str]], hcp01: hcp.SyntheticSubject
) -> None:
    root, dwi_keys = qsiprep
    keys = _keys(root)
    assert keys[0] == "dataset_description.json"
    for key in keys[1:]:
        match = QSI["dwi"].match(key) or QSI["anat"].match(key)
        assert match, key
        assert "space-ACPC" not in key  # QSIPrep < 0.24 names; anatomical files carry no space
    assert dwi_keys == [
        "sub-01/dwi/sub-01_run-1_space-T1w_desc-preproc_dwi.nii.gz",
        "sub-01/dwi/sub-01_run-2_space-T1w_desc-preproc_dwi.nii.gz",
        "sub-02/dwi/sub-02_space-T1w_desc-preproc_dwi.nii.gz",
    ]
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "qsiprep" and desc["GeneratedBy"][0]["Version"]

    dwi = root / "sub-01/dwi/sub-01_run-1_space-T1w"
    keep = bids.shell_volumes(hcp01.bvals, (1000,))
    np.testing.assert_array_equal(
        _data(Path(f"{dwi}_desc-preproc_dwi.nii.gz")), hcp01.data[..., keep]
    )
    mask = nib.load(f"{dwi}_desc-brain_mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(mask.dataobj), hcp01.brain_mask)
    np.testing.assert_array_equal(mask.affine, hcp01.dwi_affine)
    for ext in ("bval", "bvec", "json"):
        assert Path(f"{dwi}_desc-preproc_dwi.{ext}").exists()

    anat = root / "sub-01/anat/sub-01"
    aseg = nib.load(f"{anat}_desc-aseg_dseg.nii.gz")
    np.testing.assert_array_equal(np.asarray(aseg.dataobj), hcp01.aparc)
    np.testing.assert_array_equal(aseg.affine, hcp01.t1_affine)
    tissue = _data(Path(f"{anat}_dseg.nii.gz"))
    assert sorted(np.unique(tissue).tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(tissue == 3, np.isin(hcp01.aparc, list(WM_LABELS)))
    np.testing.assert_array_equal(tissue == 0, hcp01.aparc == 0)
    assert (np.isin(hcp01.aparc, [4, 43]) <= (tissue == 1)).all()  # ventricles are CSF
    t1 = _data(Path(f"{anat}_desc-preproc_T1w.nii.gz")).astype(float)
    medians = [np.median(t1[tissue == c]) for c in (1, 2, 3)]
    assert medians == sorted(medians)  # T1 contrast: CSF < grey < white
    np.testing.assert_array_equal(_data(Path(f"{anat}_desc-brain_mask.nii.gz")), hcp01.aparc > 0)

    # segmentation=False: the anatomy without any dseg.
    assert sorted(k for k in keys if k.startswith("sub-02/anat/")) == [
        "sub-02/anat/sub-02_desc-brain_mask.nii.gz",
        "sub-02/anat/sub-02_desc-preproc_T1w.nii.gz",
    ]


def test_qsiprep_acpc_names_and_one_dseg(tmp_path: Path) -> None:
    subjects = [BidsSubject("01", sessions=("a",))]
    keys = bids.write_bids(
        LocalStore(tmp_path), subjects, layout="qsiprep", qsiprep_space="ACPC", dseg="tissue"
    )
    assert keys == ["sub-01/ses-a/dwi/sub-01_ses-a_space-ACPC_desc-preproc_dwi.nii.gz"]
    written = _keys(tmp_path)
    for key in written[1:]:
        assert QSI["dwi"].match(key) or QSI["anat"].match(key), key
    assert "sub-01/anat/sub-01_space-ACPC_dseg.nii.gz" in written
    assert not [k for k in written if "aseg" in k]
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Version"].startswith("1.")


def test_bad_inputs_raise_before_anything_is_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    good = BidsSubject("01")
    bad_cohorts = [
        [BidsSubject("sub-01")],
        [BidsSubject("a_b")],
        [BidsSubject("")],
        [BidsSubject("01\n")],  # "$" would let a trailing newline through
        [BidsSubject("01", sessions=("x-1",))],
        [BidsSubject("01", sessions=("1", "1"))],
        [BidsSubject("01", runs=0)],
        [BidsSubject("01", broken="no-bvec")],  # type: ignore[arg-type]
        [good, BidsSubject("01")],
    ]
    for cohort in bad_cohorts:
        with pytest.raises(InvalidInput):
            bids.write_bids(store, cohort)
    with pytest.raises(InvalidInput, match="size"):
        bids.write_bids(store, [good], "huge")
    with pytest.raises(InvalidInput, match="seed"):
        bids.write_bids(store, [good], seed=-1)
    with pytest.raises(InvalidInput, match="qsiprep"):
        bids.write_bids(store, [good], layout="fmriprep")  # type: ignore[arg-type]
    assert list(store.list()) == []


def test_numbered_subjects() -> None:
    cohort = bids.numbered_subjects(3, sessions=2, runs=2, multishell=True)
    assert [s.label for s in cohort] == ["01", "02", "03"]
    assert cohort[0].sessions == ("01", "02") and cohort[0].runs == 2 and cohort[0].multishell
    assert [s.label for s in bids.numbered_subjects(100)][-1] == "100"
    assert bids.numbered_subjects(1)[0].sessions == ()


def test_cli_writes_what_the_api_writes(tmp_path: Path) -> None:
    from producer.cli import app

    args = ["--subjects", "1", "--sessions", "1", "--runs", "2", "--layout", "qsiprep"]
    result = CliRunner().invoke(app, ["synth", "bids", str(tmp_path / "cli"), *args])
    assert result.exit_code == 0, result.output
    assert "1 subject(s), 2 DWI series" in result.output
    cohort = bids.numbered_subjects(1, sessions=1, runs=2)
    bids.write_bids(LocalStore(tmp_path / "api"), cohort, layout="qsiprep")

    def digests(root: Path) -> dict[str, str]:
        return {k: hashlib.sha256((root / k).read_bytes()).hexdigest() for k in _keys(root)}

    assert digests(tmp_path / "cli") == digests(tmp_path / "api")  # and reproducible, byte for byte
    assert "sub-01/ses-01/dwi/sub-01_ses-01_run-2_space-T1w_desc-preproc_dwi.nii.gz" in digests(
        tmp_path / "cli"
    )

    bad = CliRunner().invoke(app, ["synth", "bids", str(tmp_path / "x"), "--layout", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
