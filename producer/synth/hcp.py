"""Synthetic diffusion-MRI subjects in the Human Connectome Project layout.

``write_subject`` writes, below a store::

    {subject}/T1w/Diffusion/data.nii.gz             4D float32, RAS+ affine
    {subject}/T1w/Diffusion/bvals                   one line of b-values (s/mm^2)
    {subject}/T1w/Diffusion/bvecs                   three lines (x, y, z), zeros for b0
    {subject}/T1w/Diffusion/nodif_brain_mask.nii.gz uint8
    {subject}/T1w/aparc+aseg.nii.gz                 int32 FreeSurfer labels on the T1 grid

The anatomy (``anatomy.py``) is analytic, so both grids sample one brain. The signal is a
multi-tensor model with isotropic grey-matter and CSF compartments and Rician noise.

Memory: the 4D series is made one volume at a time. NIfTI stores x fastest and volumes
slowest, so each volume is a contiguous run of the file: ``write_subject`` streams volumes into
gzip and never holds the series (peak RSS 1.0 GB for ``hcp``, whose series is 4.2 GB). Noise
is seeded per volume, so streamed and in-memory series are identical, bit for bit.

Files are byte-for-byte reproducible: gzip members carry no name and mtime 0. The series is
deflated Huffman-only (``Z_HUFFMAN_ONLY``): noisy floats have almost no repeated strings, so
string matching costs time for nothing. Measured here it runs at ~57 MB/s against 21 MB/s for
``compresslevel=1`` and 15 MB/s for level 6, and it is even ~0.5% smaller (89% of raw). Label
and mask images, which do repeat, are plain level-6 gzip.

bvecs are in voxel axes, which equal world axes here (diagonal positive affine), as dipy reads
them. FSL would flip x for an image with a positive-determinant affine; real HCP images are
LAS and avoid the question, but these are RAS+ by design.
"""

from __future__ import annotations

import copy
import gzip
import io
import tempfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from producer.synth.anatomy import Anatomy, Tissue
from producer.synth.gradients import gradient_scheme
from shared.checks import check_id
from shared.errors import InvalidInput
from shared.store import ObjectInfo, ObjectStore

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

S0 = {"wm": 1000.0, "gm": 1300.0, "csf": 2600.0}  # T2-weighted b0: CSF brightest
D_ISO = {"gm": 0.8e-3, "csf": 3.0e-3}  # mm^2/s
SNR_WM_B0 = 25.0
SIGMA = S0["wm"] / SNR_WM_B0
TR_S = 3.23  # HCP's diffusion TR, recorded in pixdim[4]
FIRST_SUBJECT = 100000  # write_subjects(n) names subjects "100000", "100001", ...
_SLAB_POINTS = 1_000_000  # anatomy is evaluated in x slabs of about this many points
_SMALL_GZ_LEVEL = 6


@dataclass(frozen=True)
class SizeSpec:
    """Geometry and acquisition of one size; all sizes share the HCP field of view (~181x218x181
    mm, centred on world 0) and the three shells."""

    shape: tuple[int, int, int]
    voxel_mm: float
    n_b0: int
    dirs_per_shell: int
    shells: tuple[int, ...]
    t1_shape: tuple[int, int, int]
    t1_voxel_mm: float

    @property
    def n_volumes(self) -> int:
        return self.n_b0 + self.dirs_per_shell * len(self.shells)

    @property
    def dwi_affine(self) -> F64:
        return _centred_affine(self.shape, self.voxel_mm)

    @property
    def t1_affine(self) -> F64:
        return _centred_affine(self.t1_shape, self.t1_voxel_mm)


SIZES: dict[str, SizeSpec] = {
    # Tests and demos: 30x36x30 x 147 volumes (19 MB of float32); 48 directions per shell is
    # enough for CSD at sh_order_max 8 (45 coefficients) on any single shell.
    "small": SizeSpec((30, 36, 30), 6.0, 3, 48, (1000, 2000, 3000), (52, 62, 52), 3.5),
    "medium": SizeSpec((72, 87, 72), 2.5, 6, 30, (1000, 2000, 3000), (130, 155, 130), 1.4),
    # The HCP Young Adult preprocessed geometry: 18 b0 + 3 x 90 = 288 volumes.
    "hcp": SizeSpec((145, 174, 145), 1.25, 18, 90, (1000, 2000, 3000), (260, 311, 260), 0.7),
}


@dataclass
class SyntheticSubject:
    data: F32  # (X, Y, Z, N)
    bvals: F64  # (N,)
    bvecs: F64  # (3, N), as in HCP's bvecs file
    brain_mask: npt.NDArray[np.uint8]
    aparc: npt.NDArray[np.int32]  # on the T1 grid
    dwi_affine: F64
    t1_affine: F64
    # wm_mask (bool), wm/gm/csf_fraction, fiber_dirs (X,Y,Z,3,3), fiber_fractions (X,Y,Z,3),
    # n_fibers (uint8, 0 outside wm_mask), sigma (noise sd, 0-d)
    truth: dict[str, npt.NDArray[Any]]


def _centred_affine(shape: tuple[int, int, int], voxel_mm: float) -> F64:
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * voxel_mm
    return affine


def get_spec(size: str) -> SizeSpec:
    try:
        return SIZES[size]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown synthetic size {size!r} (choose {', '.join(SIZES)})") from None


def _check_subject(subject: str) -> str:
    if not isinstance(subject, str):
        raise InvalidInput(f"subject id must be a string, got {subject!r}")
    try:
        return check_id(subject, "subject")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _axis_coords(affine: F64, shape: tuple[int, int, int]) -> list[F64]:
    return [affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3)]


def _slab_points(axes: list[F64], x0: int, x1: int) -> tuple[F64, F64, F64, tuple[int, int, int]]:
    shape = (x1 - x0, len(axes[1]), len(axes[2]))
    grid = np.meshgrid(axes[0][x0:x1], axes[1], axes[2], indexing="ij")
    x, y, z = (g.ravel() for g in grid)
    return x, y, z, shape


def _slabs(shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    step = max(1, _SLAB_POINTS // (shape[1] * shape[2]))
    return [(x0, min(x0 + step, shape[0])) for x0 in range(0, shape[0], step)]


def make_aparc(anatomy: Anatomy, spec: SizeSpec) -> npt.NDArray[np.int32]:
    out = np.zeros(spec.t1_shape, dtype=np.int32)
    axes = _axis_coords(spec.t1_affine, spec.t1_shape)
    for x0, x1 in _slabs(spec.t1_shape):
        x, y, z, shape = _slab_points(axes, x0, x1)
        out[x0:x1] = anatomy.labels(x, y, z).reshape(shape)
    return out


def tissue_slab(anatomy: Anatomy, spec: SizeSpec, x0: int, x1: int) -> Tissue:
    """Tissue of diffusion-grid planes x0:x1, points in C order over (x, y, z)."""
    x, y, z, _ = _slab_points(_axis_coords(spec.dwi_affine, spec.shape), x0, x1)
    return anatomy.tissue(x, y, z, spec.voxel_mm)


class Phantom:
    """Everything but the 4D series, from which any volume is made on demand."""

    def __init__(self, size: str, seed: int) -> None:
        self.spec = get_spec(size)
        self.seed = _check_seed(seed)
        self.noise_seed = self.seed
        self.anatomy = Anatomy.from_seed(self.seed)
        spec = self.spec
        self.bvals, self.bvecs = gradient_scheme(spec.shells, spec.dirs_per_shell, spec.n_b0)
        shape = self.spec.shape
        fields: dict[str, npt.NDArray[Any]] = {
            "wm": np.zeros(shape, np.float32),
            "gm": np.zeros(shape, np.float32),
            "csf": np.zeros(shape, np.float32),
            "dirs": np.zeros((*shape, 3, 3), np.float32),
            "fracs": np.zeros((*shape, 3), np.float32),
            "lam_par": np.zeros((*shape, 3), np.float32),
            "lam_perp": np.zeros((*shape, 3), np.float32),
        }
        for x0, x1 in _slabs(shape):
            t = tissue_slab(self.anatomy, self.spec, x0, x1)
            for name, arr in fields.items():
                arr[x0:x1] = getattr(t, name).reshape(arr[x0:x1].shape)
        self.fields = fields
        brain = fields["wm"] + fields["gm"] + fields["csf"]
        # Volumes are flat in NIfTI (Fortran) order; only voxels with tissue get a signal.
        self._idx = np.flatnonzero(brain.ravel(order="F") > 0)
        self._compact = {
            name: arr.reshape((int(np.prod(shape)), *arr.shape[3:]), order="F")[self._idx]
            for name, arr in fields.items()
        }
        self.brain_mask = (brain >= 0.5).astype(np.uint8)

    @property
    def n_volumes(self) -> int:
        return int(self.bvals.shape[0])

    def with_noise(self, noise_seed: int) -> Phantom:
        """The same brain with other noise: another acquisition of the same subject, without
        evaluating the anatomy again (the arrays are shared, never written to)."""
        other = copy.copy(self)
        other.noise_seed = _check_seed(noise_seed)
        return other

    def volume(self, n: int) -> F32:
        """Volume ``n``, flat in Fortran order, with Rician noise seeded by (noise seed, n)."""
        b = np.float32(self.bvals[n])
        g = self.bvecs[:, n].astype(np.float32)
        c = self._compact
        cos2 = np.square(c["dirs"] @ g)
        att = np.exp(-b * (c["lam_perp"] + (c["lam_par"] - c["lam_perp"]) * cos2))
        wm = np.einsum("ij,ij->i", c["fracs"], att)
        signal = S0["wm"] * c["wm"] * wm
        for tissue in ("gm", "csf"):
            signal += np.float32(S0[tissue] * np.exp(-float(b) * D_ISO[tissue])) * c[tissue]
        full = np.zeros(int(np.prod(self.spec.shape)), dtype=np.float32)
        full[self._idx] = signal
        rng = np.random.default_rng([self.noise_seed, 1, n])
        real = rng.standard_normal(full.shape, dtype=np.float32)
        real *= np.float32(SIGMA)
        real += full
        imag = rng.standard_normal(full.shape, dtype=np.float32)
        imag *= np.float32(SIGMA)
        real *= real
        imag *= imag
        real += imag
        return np.sqrt(real, out=real)  # magnitude of a complex Gaussian: Rician

    def truth(self) -> dict[str, npt.NDArray[Any]]:
        f = self.fields
        wm_mask = f["wm"] >= 0.5
        n_fibers = np.where(wm_mask, (f["fracs"] > 0).sum(axis=-1), 0).astype(np.uint8)
        return {
            "wm_mask": wm_mask,
            "wm_fraction": f["wm"],
            "gm_fraction": f["gm"],
            "csf_fraction": f["csf"],
            "fiber_dirs": f["dirs"],
            "fiber_fractions": f["fracs"],
            "n_fibers": n_fibers,
            "sigma": np.asarray(SIGMA, dtype=np.float32),
        }

    def data_header(self, n_volumes: int | None = None) -> nib.Nifti1Header:
        hdr = _header(self.spec.dwi_affine, np.float32)
        hdr.set_data_shape((*self.spec.shape, self.n_volumes if n_volumes is None else n_volumes))
        hdr.set_zooms((*(self.spec.voxel_mm,) * 3, TR_S))
        hdr["descrip"] = f"voxfleet synthetic HCP-like dMRI seed={self.seed}"[:80].encode()
        return hdr


def make_subject(size: str = "small", seed: int = 0) -> SyntheticSubject:
    """One subject in memory (for ``hcp`` that is 4.2 GB of series)."""
    ph = Phantom(size, seed)
    data = np.empty((*ph.spec.shape, ph.n_volumes), dtype=np.float32, order="F")
    for n in range(ph.n_volumes):
        data[..., n] = ph.volume(n).reshape(ph.spec.shape, order="F")
    return SyntheticSubject(
        data=data,
        bvals=ph.bvals,
        bvecs=ph.bvecs,
        brain_mask=ph.brain_mask,
        aparc=make_aparc(ph.anatomy, ph.spec),
        dwi_affine=ph.spec.dwi_affine,
        t1_affine=ph.spec.t1_affine,
        truth=ph.truth(),
    )


def _header(affine: F64, dtype: type[np.generic]) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    return hdr


def nifti_gz(arr: npt.NDArray[Any], affine: F64) -> bytes:
    img = nib.Nifti1Image(arr, affine, header=_header(affine, arr.dtype.type))
    return gzip.compress(img.to_bytes(), compresslevel=_SMALL_GZ_LEVEL, mtime=0)


def stream_series(
    ph: Phantom,
    path: Path,
    volumes: Sequence[int] | None = None,
    header: nib.Nifti1Header | None = None,
) -> None:
    """Header, then each volume as it is made (all of them, or ``volumes`` in that order, under
    ``header``, by default ``ph.data_header`` for that many). zlib releases the GIL, so one thread
    compresses volume n while this one computes volume n + 1."""
    order = range(ph.n_volumes) if volumes is None else volumes
    header_bytes = io.BytesIO()
    (ph.data_header(len(order)) if header is None else header).write_to(header_bytes)
    # wbits 31: a gzip container with mtime 0 and no file name, so output is reproducible.
    comp = zlib.compressobj(6, zlib.DEFLATED, 31, 9, zlib.Z_HUFFMAN_ONLY)
    with (
        path.open("wb") as raw,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-gzip") as pool,
    ):

        def put(chunk: memoryview) -> None:
            raw.write(comp.compress(chunk))

        put(header_bytes.getbuffer())
        pending: Future[None] | None = None
        for n in order:
            vol = ph.volume(n)
            if pending is not None:
                pending.result()
            pending = pool.submit(put, vol.data)
        if pending is not None:
            pending.result()
        raw.write(comp.flush())


def format_line(values: F64, fmt: str) -> bytes:
    return (" ".join(format(float(v), fmt) for v in values) + "\n").encode()


def write_subject(
    store: ObjectStore, subject: str, size: str = "small", seed: int = 0
) -> list[ObjectInfo]:
    """Write one subject in the HCP layout below ``store``; returns the objects written."""
    _check_subject(subject)
    ph = Phantom(size, seed)
    base = f"{subject}/T1w"
    infos: list[ObjectInfo] = []
    with tempfile.TemporaryDirectory(prefix="voxfleet-synth-") as tmp:
        path = Path(tmp) / "data.nii.gz"
        stream_series(ph, path)
        infos.append(store.put_file(f"{base}/Diffusion/data.nii.gz", path))
    infos.append(store.put_bytes(f"{base}/Diffusion/bvals", format_line(ph.bvals, ".0f")))
    bvecs = b"".join(format_line(row, ".6f") for row in ph.bvecs)
    infos.append(store.put_bytes(f"{base}/Diffusion/bvecs", bvecs))
    mask = nifti_gz(ph.brain_mask, ph.spec.dwi_affine)
    infos.append(store.put_bytes(f"{base}/Diffusion/nodif_brain_mask.nii.gz", mask))
    aparc = nifti_gz(make_aparc(ph.anatomy, ph.spec), ph.spec.t1_affine)
    infos.append(store.put_bytes(f"{base}/aparc+aseg.nii.gz", aparc))
    return infos


def subject_seed(subject: str, seed: int) -> int:
    """Seed of one subject within a cohort: a function of its id, not its position, so a
    subject's data does not change when the list around it does."""
    return _check_seed(seed) * 2**32 + zlib.crc32(subject.encode())


def write_subjects(
    store: ObjectStore,
    subjects: list[str] | int,
    size: str = "small",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write a cohort; an int ``n`` means ids "100000" ... str(100000 + n - 1), HCP-style.

    Every id, the size and the seed are checked before anything is written. ``progress`` is
    called with the number of subjects written so far.
    """
    if isinstance(subjects, int):
        if isinstance(subjects, bool) or subjects < 0:
            raise InvalidInput(f"subject count must be a non-negative integer, got {subjects!r}")
        ids = [str(FIRST_SUBJECT + i) for i in range(subjects)]
    else:
        ids = list(subjects)
    get_spec(size)
    _check_seed(seed)
    if len(set(ids)) != len(ids):
        raise InvalidInput("duplicate subject ids")
    for sid in ids:
        _check_subject(sid)
    for done, sid in enumerate(ids, start=1):
        write_subject(store, sid, size, subject_seed(sid, seed))
        if progress is not None:
            progress(done)
    return ids
