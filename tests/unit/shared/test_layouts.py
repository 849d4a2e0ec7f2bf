"""Input layouts (``shared.layouts``) on datasets written in the real layouts by the synth."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.synth.bids import BidsSubject, write_bids
from producer.synth.hcp import write_subjects
from shared.errors import InvalidInput, MissingInput
from shared.layouts import LAYOUTS, detect, resolve
from shared.layouts.bids import entities, series_id
from shared.store import LocalStore

SUBJECTS = [
    BidsSubject("01", sessions=("1", "2")),
    BidsSubject("02", runs=2, segmentation=False),
    BidsSubject("03", broken="no-bval"),
    BidsSubject("04", broken="no-dwi"),
]


@pytest.fixture(scope="module", params=["bids", "qsiprep"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(request.param)
    write_bids(LocalStore(root), SUBJECTS, "small", layout=request.param)
    return root


def test_a_dataset_is_found_by_its_layout(dataset: Path, tmp_path: Path) -> None:
    assert detect(LocalStore(dataset)).name == dataset.name.rstrip("0123456789")
    write_subjects(LocalStore(tmp_path / "hcp"), ["100307"], "small")
    assert detect(LocalStore(tmp_path / "hcp")).name == "hcp"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="name one with --layout"):
        detect(LocalStore(tmp_path / "empty"))


class Counting(LocalStore):
    """A store that counts the objects asked for one by one (a HEAD each on S3)."""

    heads = 0

    def exists(self, key: str) -> bool:
        Counting.heads += 1
        return super().exists(key)


def test_one_job_per_series_and_one_line_per_unusable_subject(dataset: Path) -> None:
    store = Counting(dataset)
    layout = detect(store)
    Counting.heads = 0
    found = layout.discover(store, str(dataset))
    assert Counting.heads == 0  # one listing answers everything: no HEAD per series
    runnable = {f.subject: f for f in found if not f.problem}
    assert sorted(runnable) == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2"]
    problems = {f.subject: f.problem for f in found if f.problem}
    assert set(problems) == {"sub-03", "sub-04"}
    assert "no .bval" in problems["sub-03"] and "no diffusion data" in problems["sub-04"]
    for row in runnable.values():
        assert resolve(row.input_uri)[0] is layout
        assert row.input_uri.endswith("_dwi.nii.gz") and Path(row.input_uri).is_file()


def test_a_series_names_its_companions(dataset: Path) -> None:
    store = LocalStore(dataset)
    layout = detect(store)
    rows = {f.subject: f for f in layout.discover(store, str(dataset)) if not f.problem}
    got, root, key = resolve(rows["sub-01_ses-2"].input_uri)
    assert got is layout and Path(root) == dataset
    files = layout.files(LocalStore(Path(root)), key)
    for name in (files.dwi, files.bval, files.bvec, files.sidecar):
        assert name is not None and (dataset / name).is_file(), name
    assert files.entities["subject"] == "01" and files.entities["session"] == "2"
    if layout.name == "bids":
        assert files.mask is None and files.segmentation is None  # raw BIDS has neither
    else:
        assert files.mask is not None and (dataset / files.mask).is_file()
        assert files.segmentation is not None and files.segmentation.endswith(
            "desc-aseg_dseg.nii.gz"
        )
        assert files.segmentation_kind == "freesurfer"
        no_seg = layout.files(LocalStore(Path(root)), resolve(rows["sub-02_run-1"].input_uri)[2])
        assert no_seg.segmentation is None  # white matter will come from FA
    broken = next(dataset.glob("sub-03/**/*_dwi.nii.gz")).relative_to(dataset)
    with pytest.raises(MissingInput, match=r"no \.bval"):
        layout.files(store, str(broken))


def test_gradient_tables_are_inherited_from_higher_levels(tmp_path: Path) -> None:
    write_bids(LocalStore(tmp_path), [BidsSubject("01")], "small", layout="bids")
    own = tmp_path / "sub-01/dwi/sub-01_dwi.bval"
    (tmp_path / "dwi.bval").write_bytes(own.read_bytes())  # the dataset-level table
    own.unlink()
    files = LAYOUTS["bids"].files(LocalStore(tmp_path), "sub-01/dwi/sub-01_dwi.nii.gz")
    assert files.bval == "dwi.bval" and files.bvec == "sub-01/dwi/sub-01_dwi.bvec"
    # Discovery, from the listing alone, finds the same inherited table.
    found = LAYOUTS["bids"].discover(LocalStore(tmp_path), str(tmp_path))
    assert [f.problem for f in found] == [""]


def test_entities_come_from_pybids() -> None:
    key = "sub-07/ses-pre/dwi/sub-07_ses-pre_acq-multiband_dir-AP_run-02_dwi.nii.gz"
    found = entities(key)
    assert found["subject"] == "07" and found["acquisition"] == "multiband"
    assert series_id(found) == "sub-07_ses-pre_acq-multiband_dir-AP_run-02"


def test_an_hcp_input_is_its_folder_and_a_bids_series_its_file() -> None:
    assert resolve("s3://lab/hcp/100307/")[1:] == ("s3://lab/hcp/100307", "")
    layout, root, key = resolve(
        "s3://openneuro.org/ds000114/sub-01/ses-test/dwi/sub-01_ses-test_dwi.nii.gz"
    )
    assert (layout.name, root, key) == (
        "bids",
        "s3://openneuro.org/ds000114",
        "sub-01/ses-test/dwi/sub-01_ses-test_dwi.nii.gz",
    )
    qsi = "s3://b/qsiprep/sub-1/dwi/sub-1_space-T1w_desc-preproc_dwi.nii.gz"
    assert resolve(qsi)[0].name == "qsiprep"
    with pytest.raises(InvalidInput, match="below a sub-<label> folder"):
        resolve("s3://b/loose_dwi.nii.gz")
