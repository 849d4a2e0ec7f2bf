"""Synthetic diffusion-MRI subjects as a raw BIDS dataset or as QSIPrep derivatives.

The subjects are ``hcp.py``'s, not lookalikes: one ``Phantom`` per subject, seeded by
``hcp.subject_seed(label, seed)``, so ``sub-01`` is the brain of HCP-layout subject ``"01"`` of
the same cohort seed. A series is a selection of that subject's HCP volumes in acquisition order:
the b0s and the b=1000 shell, or with ``multishell`` the b=1000 and b=2000 shells. Every volume
is made per (b, direction) from the same multi-tensor model, attenuation ``exp(-b D(g))`` for any
b, and its noise is seeded per volume index, so each is the HCP series' volume bit for bit. The
first acquisition of a subject (first session, run 1) carries the HCP subject's own noise; every
other one is the same brain with noise seeded by its file name, as a rescan would be.

Layouts (``<stem>`` = ``sub-<l>[_ses-<s>][_run-<i>]``; the run entity only with several runs)::

    bids     dataset_description.json, participants.tsv, participants.json, README
             sub-<l>/[ses-<s>/]dwi/<stem>_dwi.{nii.gz,bval,bvec,json}
             sub-<l>/[ses-<s>/]anat/sub-<l>[_ses-<s>]_T1w.nii.gz
    qsiprep  dataset_description.json (DatasetType derivative, GeneratedBy qsiprep)
             sub-<l>/[ses-<s>/]dwi/<stem>_space-T1w_desc-preproc_dwi.{nii.gz,bval,bvec,json}
             sub-<l>/[ses-<s>/]dwi/<stem>_space-T1w_desc-brain_mask.nii.gz
             sub-<l>/anat/sub-<l>_{desc-preproc_T1w,desc-brain_mask,desc-aseg_dseg,dseg}.nii.gz

Raw BIDS has no brain mask: a consumer computes its own. QSIPrep up to 0.23 named its outputs
``space-T1w`` and its anatomical files without a space; 0.24 and 1.x write ``space-ACPC`` on both
(``qsiprep_space="ACPC"``). Its ``_dseg`` is tissue classes (MRtrix's FreeSurfer2dseg mapping of
the aseg: 1 CSF, 2 grey matter, 3 white matter), ``_desc-aseg_dseg`` FreeSurfer labels (here the
HCP synth's aparc+aseg). Unlike real QSIPrep these stay RAS+ (it writes LPS+) and keep one output
per run (as its ``--separate-all-dwis`` does; by default it merges a session's runs).

bval/bvec follow BIDS, which adopts FSL's format: b-vectors in the image's voxel axes, three
lines. That is what HCP's ``bvecs`` holds, and the files here are byte-for-byte HCP's for the
volumes kept; voxel axes are world axes (diagonal positive affine). As ``hcp.py`` notes, FSL
itself (and MRtrix's ``-fslgrad``) would mirror x for an image with a positive-determinant
affine; dipy, and so voxfleet, reads the vectors as written.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import nibabel as nib
import numpy as np
import numpy.typing as npt

from producer.synth import hcp
from producer.synth.anatomy import LABELS, WM_LABELS
from shared.errors import InvalidInput
from shared.store import ObjectStore

Layout = Literal["bids", "qsiprep"]
Fault = Literal["no-bval", "no-dwi", "zero-voxel-size", "singular-affine"]
Dseg = Literal["aseg", "tissue", "both"]
QsiprepSpace = Literal["T1w", "ACPC"]

BIDS_VERSION = "1.10.0"
# The last QSIPrep release that named each space (0.24, PennLINC/qsiprep#859, renamed it).
QSIPREP_VERSION: dict[str, str] = {"T1w": "0.23.0", "ACPC": "1.1.1"}
SINGLE_SHELL = (1000,)
# Either shell alone fits CSD: per shell, small has 48 directions (sh_order_max 8 needs 45),
# medium 30 (order 6), hcp 90.
MULTI_SHELL = (1000, 2000)
# HCP-like acquisition. RepetitionTime is the series' pixdim[4]: the BIDS validator checks both.
ACQUISITION: dict[str, Any] = {
    "PhaseEncodingDirection": "j-",
    "TotalReadoutTime": 0.0959,
    "EchoTime": 0.0895,
    "RepetitionTime": hcp.TR_S,
    "MagneticFieldStrength": 3,
}
# T1 contrast by tissue class (background, CSF, grey, white) on FreeSurfer's ~0-150 scale.
_T1_MEAN = np.array([0.0, 35.0, 75.0, 110.0], dtype=np.float32)
_T1_SIGMA = np.float32(3.0)
_CSF_LABELS = sorted(k for k, name in LABELS.items() if "Ventricle" in name or name == "CSF")
_LABEL = re.compile(r"[A-Za-z0-9]{1,64}")  # a BIDS label: letters and digits only (fullmatch)

_GENERATOR = {"Name": "voxfleet", "Description": "synthetic subjects, producer/synth/bids.py"}
_RAW: dict[str, Any] = {
    "Name": "voxfleet synthetic diffusion MRI",
    "BIDSVersion": BIDS_VERSION,
    "DatasetType": "raw",
    "License": "CC0",
    "Authors": ["voxfleet synthetic data generator"],
    "GeneratedBy": [_GENERATOR],
}
_PARTICIPANTS = {
    "participant_id": {"Description": "Participant label"},
    "seed": {"Description": "Seed of the synthetic subject (hcp.Phantom): its anatomy"},
}
_README = """Synthetic diffusion MRI written by voxfleet for tests and demos: an analytic brain
(multi-tensor white matter, isotropic grey matter and CSF, Rician noise). No person's data.
"""
_DERIVATIVE: dict[str, Any] = {
    "Name": "QSIPrep output",
    "BIDSVersion": BIDS_VERSION,
    "DatasetType": "derivative",
}
_QSIPREP = {
    "Name": "qsiprep",
    "CodeURL": "https://github.com/PennLINC/qsiprep",
    "Description": "synthetic: written by voxfleet in QSIPrep's layout, not by QSIPrep",
}


@dataclass(frozen=True)
class BidsSubject:
    """One participant: ``runs`` DWI runs in each session (or once, with no sessions)."""

    label: str
    sessions: tuple[str, ...] = ()
    runs: int = 1
    segmentation: bool = True  # qsiprep: write the dseg image(s)
    multishell: bool = False
    all_shells: bool = False  # every volume of the HCP series: the same data in both layouts
    broken: Fault | None = None  # a deliberate fault, applied to every DWI of the subject

    def check(self) -> None:
        what = f"subject {self.label!r}"
        if not isinstance(self.label, str) or not _LABEL.fullmatch(self.label):
            raise InvalidInput(f"{what}: a BIDS label is 1-64 letters and digits")
        if not isinstance(self.sessions, tuple | list) or not all(
            isinstance(s, str) and _LABEL.fullmatch(s) for s in self.sessions
        ):
            raise InvalidInput(f"{what}: session labels are letters and digits")
        if len(set(self.sessions)) != len(self.sessions):
            raise InvalidInput(f"{what}: duplicate session labels")
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1:
            raise InvalidInput(f"{what}: runs must be a positive integer, got {self.runs!r}")
        if self.broken is not None and self.broken not in get_args(Fault):
            raise InvalidInput(f"{what}: unknown fault {self.broken!r}")

    def acquisitions(self) -> list[tuple[str | None, int]]:
        return [(ses, run) for ses in self.sessions or [None] for run in range(1, self.runs + 1)]

    def stem(self, session: str | None, run: int | None = None) -> str:
        parts = [f"sub-{self.label}"]
        if session is not None:
            parts.append(f"ses-{session}")
        if run is not None and self.runs > 1:
            parts.append(f"run-{run}")
        return "_".join(parts)

    def folder(self, session: str | None) -> str:
        return f"sub-{self.label}" + (f"/ses-{session}" if session is not None else "")


def numbered_subjects(
    n: int, sessions: int = 0, runs: int = 1, *, multishell: bool = False
) -> list[BidsSubject]:
    """sub-01 ... sub-NN, each with sessions ses-01 ... (none for 0) of ``runs`` runs."""
    if isinstance(n, bool) or n < 0 or sessions < 0:
        raise InvalidInput("subject and session counts must be non-negative integers")
    width = max(2, len(str(n)))
    ses = tuple(f"{i:02d}" for i in range(1, sessions + 1))
    return [
        BidsSubject(f"{i:0{width}d}", ses, runs, multishell=multishell) for i in range(1, n + 1)
    ]


def shell_volumes(bvals: npt.NDArray[np.float64], shells: tuple[int, ...]) -> list[int]:
    """Indices of the b0s and of ``shells`` in an HCP scheme, in acquisition order."""
    return [int(i) for i in np.flatnonzero((bvals == 0) | np.isin(bvals, shells))]


def tissue_classes(aparc: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """QSIPrep's ``_dseg`` classes from FreeSurfer labels: 0 outside, 1 CSF, 2 grey, 3 white."""
    out = np.where(aparc > 0, 2, 0).astype(np.uint8)
    out[np.isin(aparc, _CSF_LABELS)] = 1
    out[np.isin(aparc, sorted(WM_LABELS))] = 3
    return out


def t1_like(aparc: npt.NDArray[np.int32], seed: int) -> npt.NDArray[np.int16]:
    """A T1-weighted-looking volume on the label grid: class means with Rician noise."""
    mean: npt.NDArray[np.float32] = _T1_MEAN[tissue_classes(aparc)]
    rng = np.random.default_rng([seed, 2])
    real = rng.standard_normal(mean.shape, dtype=np.float32) * _T1_SIGMA + mean
    imag = rng.standard_normal(mean.shape, dtype=np.float32) * _T1_SIGMA
    out: npt.NDArray[np.int16] = np.rint(np.hypot(real, imag)).astype(np.int16)
    return out


def _dwi_header(ph: hcp.Phantom, n_volumes: int, broken: Fault | None) -> nib.Nifti1Header:
    hdr = ph.data_header(n_volumes)
    if broken == "zero-voxel-size":
        hdr["pixdim"][3] = 0.0  # z spacing lost, as a bad converter writes; the sform is intact
    elif broken == "singular-affine":
        singular = ph.spec.dwi_affine.copy()
        singular[:3, 2] = 0.0  # every slice lands on the same plane
        hdr.set_sform(singular, code=1)
        hdr.set_qform(None, code=0)  # and no qform to fall back on
    return hdr


def _json(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _lines(rows: Sequence[Sequence[str]]) -> bytes:
    return "".join("\t".join(row) + "\n" for row in rows).encode()


class _Writer:
    """One dataset being written: the layout's names, the cohort seed and the keys so far."""

    def __init__(
        self, store: ObjectStore, size: str, seed: int, layout: Layout, dseg: Dseg, space: str
    ) -> None:
        self.store, self.size, self.seed = store, size, seed
        self.layout, self.dseg, self.space = layout, dseg, space
        self.dwi_keys: list[str] = []

    def dataset_files(self, subjects: Sequence[BidsSubject]) -> None:
        if self.layout == "qsiprep":
            qsiprep = {**_QSIPREP, "Version": QSIPREP_VERSION[self.space]}
            description = {**_DERIVATIVE, "GeneratedBy": [qsiprep]}
            self.store.put_bytes("dataset_description.json", _json(description))
            return
        self.store.put_bytes("dataset_description.json", _json(_RAW))
        rows = [("participant_id", "seed")]
        rows += [(f"sub-{s.label}", str(hcp.subject_seed(s.label, self.seed))) for s in subjects]
        self.store.put_bytes("participants.tsv", _lines(rows))
        self.store.put_bytes("participants.json", _json(_PARTICIPANTS))
        self.store.put_bytes("README", _README.encode())

    def subject(self, subject: BidsSubject) -> None:
        ph = hcp.Phantom(self.size, hcp.subject_seed(subject.label, self.seed))
        aparc = hcp.make_aparc(ph.anatomy, ph.spec)
        t1_affine = ph.spec.t1_affine
        if self.layout == "bids":
            for ses in subject.sessions or [None]:
                stem = subject.stem(ses)
                t1 = t1_like(aparc, hcp.subject_seed(f"{stem}_T1w", self.seed))
                key = f"{subject.folder(ses)}/anat/{stem}_T1w.nii.gz"
                self.store.put_bytes(key, hcp.nifti_gz(t1, t1_affine))
        else:
            base = f"sub-{subject.label}/anat/sub-{subject.label}{self._space('anat')}"
            t1 = t1_like(aparc, hcp.subject_seed(f"sub-{subject.label}_T1w", self.seed))
            self.store.put_bytes(f"{base}_desc-preproc_T1w.nii.gz", hcp.nifti_gz(t1, t1_affine))
            mask = (aparc > 0).astype(np.uint8)
            self.store.put_bytes(f"{base}_desc-brain_mask.nii.gz", hcp.nifti_gz(mask, t1_affine))
            if subject.segmentation and self.dseg in ("aseg", "both"):
                self.store.put_bytes(
                    f"{base}_desc-aseg_dseg.nii.gz", hcp.nifti_gz(aparc, t1_affine)
                )
            if subject.segmentation and self.dseg in ("tissue", "both"):
                classes = tissue_classes(aparc)
                self.store.put_bytes(f"{base}_dseg.nii.gz", hcp.nifti_gz(classes, t1_affine))
        if subject.broken == "no-dwi":
            return
        if subject.all_shells:
            volumes = list(range(len(ph.bvals)))
        else:
            volumes = shell_volumes(ph.bvals, MULTI_SHELL if subject.multishell else SINGLE_SHELL)
        for i, (ses, run) in enumerate(subject.acquisitions()):
            stem = subject.stem(ses, run)
            acq = ph if i == 0 else ph.with_noise(hcp.subject_seed(stem, self.seed))
            self.series(acq, f"{subject.folder(ses)}/dwi/{stem}", volumes, subject.broken)

    def _space(self, kind: Literal["dwi", "anat"]) -> str:
        # QSIPrep < 0.24 left the space out of anatomical names (T1w space was implied).
        if kind == "anat" and self.space == "T1w":
            return ""
        return f"_space-{self.space}"

    def series(
        self, ph: hcp.Phantom, prefix: str, volumes: list[int], broken: Fault | None
    ) -> None:
        if self.layout == "bids":
            base, sidecar = f"{prefix}_dwi", dict(ACQUISITION)
        else:
            base = f"{prefix}{self._space('dwi')}_desc-preproc_dwi"
            sidecar = {**ACQUISITION, "SkullStripped": False}
            mask_key = f"{prefix}{self._space('dwi')}_desc-brain_mask.nii.gz"
            self.store.put_bytes(mask_key, hcp.nifti_gz(ph.brain_mask, ph.spec.dwi_affine))
        with tempfile.TemporaryDirectory(prefix="voxfleet-synth-") as tmp:
            path = Path(tmp) / "dwi.nii.gz"
            hcp.stream_series(ph, path, volumes, _dwi_header(ph, len(volumes), broken))
            self.store.put_file(f"{base}.nii.gz", path)
        if broken != "no-bval":
            self.store.put_bytes(f"{base}.bval", hcp.format_line(ph.bvals[volumes], ".0f"))
        bvecs = b"".join(hcp.format_line(row, ".6f") for row in ph.bvecs[:, volumes])
        self.store.put_bytes(f"{base}.bvec", bvecs)
        self.store.put_bytes(f"{base}.json", _json(sidecar))
        self.dwi_keys.append(f"{base}.nii.gz")


def write_bids(
    store: ObjectStore,
    subjects: Sequence[BidsSubject],
    size: str = "small",
    *,
    layout: Layout = "bids",
    seed: int = 0,
    dseg: Dseg = "both",
    qsiprep_space: QsiprepSpace = "T1w",
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write a dataset at the root of ``store``; returns the keys of the DWI series written.

    Everything is checked before anything is written. ``dseg`` and ``qsiprep_space`` only matter
    for ``layout="qsiprep"``. ``progress`` is called with the number of subjects written so far.
    """
    hcp.get_spec(size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    for value, kind in ((layout, Layout), (dseg, Dseg), (qsiprep_space, QsiprepSpace)):
        if value not in get_args(kind):
            raise InvalidInput(f"{value!r} is not one of {', '.join(get_args(kind))}")
    subjects = list(subjects)
    for subject in subjects:
        if not isinstance(subject, BidsSubject):
            raise InvalidInput(f"expected a BidsSubject, got {subject!r}")
        subject.check()
    if len({s.label for s in subjects}) != len(subjects):
        raise InvalidInput("duplicate subject labels")
    writer = _Writer(store, size, seed, layout, dseg, qsiprep_space)
    writer.dataset_files(subjects)
    for done, subject in enumerate(subjects, start=1):
        writer.subject(subject)
        if progress is not None:
            progress(done)
    return writer.dwi_keys
