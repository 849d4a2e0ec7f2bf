"""Reading one HCP-layout subject (``T1w/Diffusion/...``) from an object store, validated.

Everything a user could get wrong about an input becomes ``InvalidInput`` with a one-line reason
naming the file, *before* any cluster is acquired. Header checks (rank, dimensions against the
configured limits) run before the voxel data is decompressed, so a hostile or mistaken input is
refused without ever being inflated in memory. The gradient table's own checks (counts, unit
directions, a b0) are in ``gradients.py``.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

from consumers.pipelines.diffusion.gradients import gradient_table_for, read_gradients
from shared.errors import InvalidInput, MissingInput, one_line_reason
from shared.layouts.hcp import APARC_KEY, BVALS_KEY, BVECS_KEY, DWI_KEY, MASK_KEY
from shared.settings import Settings
from shared.store import ObjectStore

# The text gradient tables are tiny; anything bigger is not a bvals/bvecs file.
_MAX_TEXT_BYTES = 1024**2
# What nibabel and the gzip/zlib layers raise for truncated, corrupt or non-NIfTI bytes.
_NIFTI_ERRORS = (
    EOFError,
    zlib.error,
    OSError,
    ValueError,
    TypeError,
    ImageFileError,
    HeaderDataError,
)
# Mask and label volumes may share the DWI grid only up to rounding in the stored affine.
_AFFINE_ATOL = 1e-3
# Compressed bytes read to find a NIfTI header (348 or 540 bytes once inflated): ample.
_HEADER_BYTES = 64 * 1024


@dataclass
class Subject:
    """A validated diffusion dataset, ready to fit."""

    data: NDArray[np.float32]  # (x, y, z, volumes)
    affine: NDArray[np.float64]  # voxel -> world (mm), shared by data and mask
    gtab: Any  # dipy GradientTable (dipy has no type stubs)
    mask: NDArray[np.bool_]  # (x, y, z)
    zooms: tuple[float, float, float]  # voxel size in mm
    xform_codes: tuple[int, int]  # (qform_code, sform_code) of data.nii.gz, reused on outputs
    nonfinite_values: int  # NaN/inf DWI samples that were replaced by 0
    source: str  # URI of the subject directory, for messages and reports

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.data.shape[:3]
        return (x, y, z)


def _require(inputs: ObjectStore, key: str) -> int:
    """The object's size; a MissingInput naming the object (and the layout) if it is absent."""
    try:
        return inputs.size(key)
    except MissingInput:
        raise MissingInput(
            f"missing input {inputs.uri_for(key)} (an HCP subject needs {key})"
        ) from None


def _checked_size(inputs: ObjectStore, key: str, settings: Settings) -> int:
    """The object's size, refused if it is absent, empty or above the input limit."""
    size = _require(inputs, key)
    if size > settings.max_input_bytes:
        raise InvalidInput(
            f"{key} is {size} bytes, above the {settings.max_input_bytes}-byte input limit"
        )
    if size == 0:
        raise InvalidInput(f"{key} is empty: {inputs.uri_for(key)}")
    return size


def _fetch(inputs: ObjectStore, key: str, workdir: Path, settings: Settings) -> Path:
    _checked_size(inputs, key, settings)
    dest = workdir / "inputs" / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    return inputs.get_file(key, dest)


def _open_nifti(path: Path, key: str) -> Any:
    try:
        img = nib.load(path)
    except _NIFTI_ERRORS as exc:
        reason = one_line_reason(exc, path, key)
        raise InvalidInput(f"{key} is not a readable NIfTI file ({reason})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidInput(f"{key} is a {type(img).__name__}, expected NIfTI")
    return img


def _read_voxels(img: Any, path: Path, key: str, dtype: Any) -> NDArray[Any]:
    try:
        arr = np.asarray(img.get_fdata(dtype=dtype) if dtype is not None else img.dataobj)
    except _NIFTI_ERRORS as exc:
        raise InvalidInput(
            f"{key} is corrupt or truncated "
            f"({type(exc).__name__}: {one_line_reason(exc, path, key)})"
        ) from None
    # The array is in memory now; the scratch copy only costs disk (1+ GB for an HCP DWI).
    path.unlink(missing_ok=True)
    return arr


def _checked_shape(
    key: str, dims: Any, dtype: np.dtype[Any], rank: int, settings: Settings
) -> tuple[int, ...]:
    """A NIfTI's shape and data type checked against what the job needs and the limits."""
    shape = tuple(int(n) for n in dims)
    if rank == 3 and len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]  # some tools write masks and labels as (x, y, z, 1)
    if len(shape) != rank:
        what = "(x, y, z, volumes)" if rank == 4 else "(x, y, z)"
        raise InvalidInput(f"{key} must be {rank}D {what}, got {len(shape)}D {shape}")
    if min(shape) < 1:
        raise InvalidInput(f"{key} has an empty dimension: shape {shape}")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        # nibabel would cast complex to real silently, dropping the imaginary part.
        raise InvalidInput(f"{key} has data type {dtype}; expected real numbers (ints or floats)")
    n_vox = int(np.prod(shape[:3], dtype=np.int64))
    if n_vox > settings.max_voxels:
        raise InvalidInput(
            f"{key} has {n_vox} voxels {shape[:3]}, above the limit of {settings.max_voxels}"
        )
    if rank == 4 and shape[3] > settings.max_volumes:
        raise InvalidInput(
            f"{key} has {shape[3]} volumes, above the limit of {settings.max_volumes}"
        )
    return shape


def _checked_geometry(key: str, header: Any) -> None:
    """Refuse a header whose grid is not a grid: voxel sizes (``pixdim``) zero, negative or
    not finite, or an affine that maps the voxels onto a plane. nibabel only warns about
    the first and loads such a file with 1 mm guessed in; every distance, step size and
    streamline length computed from it would be silently wrong."""
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
        sizes = ", ".join(f"{v:g}" for v in pixdim)
        raise InvalidInput(f"{key} has voxel sizes {sizes} (pixdim); each must be above 0")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidInput(f"{key} has a singular affine (its voxels map onto a plane or a line)")


def _open_checked(
    inputs: ObjectStore, key: str, workdir: Path, settings: Settings, rank: int
) -> tuple[Any, Path, tuple[int, ...]]:
    """Fetch and open a NIfTI and check its header (rank, size limits); no voxels read yet."""
    path = _fetch(inputs, key, workdir, settings)
    img = _open_nifti(path, key)
    shape = _checked_shape(key, img.shape, img.get_data_dtype(), rank, settings)
    return img, path, shape


def _peek_header(inputs: ObjectStore, key: str, settings: Settings) -> Any:
    """The NIfTI header of ``key`` from the object's first bytes (a ranged read): the image
    itself is neither downloaded nor inflated."""
    _checked_size(inputs, key, settings)
    head = inputs.head_bytes(key, _HEADER_BYTES)
    raw = head
    if head[:2] == b"\x1f\x8b":
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 2048)
        except zlib.error as exc:
            reason = f"corrupt gzip stream: {one_line_reason(exc)}"
            raise InvalidInput(f"{key} is not a readable NIfTI file ({reason})") from None
    # Recognise the header by its size field and magic first: nibabel's own checks would log
    # a screenful of "fixes" for every wrong guess.
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizes and raw[344:348] in (b"n+1\0", b"ni1\0"):
        header_class: Any = nib.Nifti1Header
    elif 540 in sizes and raw[4:8] in (b"n+2\0", b"ni2\0"):
        header_class = nib.Nifti2Header
    else:
        raise InvalidInput(f"{key} is not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    try:
        header = header_class.from_fileobj(io.BytesIO(raw), check=False)
        header.get_data_dtype()  # an unknown datatype code raises here
        return header
    except _NIFTI_ERRORS as exc:
        raise InvalidInput(f"{key} is not a readable NIfTI file ({one_line_reason(exc)})") from None


def _same_grid(
    mask_shape: tuple[int, ...],
    mask_affine: NDArray[Any],
    shape: tuple[int, ...],
    affine: NDArray[Any],
) -> None:
    if mask_shape != shape[:3]:
        raise InvalidInput(
            f"{MASK_KEY} has shape {mask_shape} but {DWI_KEY} volumes are {shape[:3]}"
        )
    if not np.allclose(mask_affine, affine, atol=_AFFINE_ATOL):
        raise InvalidInput(f"{MASK_KEY} is not on the same grid (affine) as {DWI_KEY}")


def _read_text(inputs: ObjectStore, key: str, settings: Settings) -> str:
    size = _require(inputs, key)
    limit = min(settings.max_input_bytes, _MAX_TEXT_BYTES)
    if size > limit:
        raise InvalidInput(f"{key} is {size} bytes, above the {limit}-byte input limit")
    try:
        return inputs.get_bytes(key).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput(f"{key} is not a plain-text gradient table") from None


def check_subject(
    inputs: ObjectStore, settings: Settings, *, b0_threshold: float, extra: tuple[str, ...] = ()
) -> Any:
    """The cheap half of ``load_subject``, run before any cluster starts: every object there,
    non-empty and within the size limit; the images' headers (read from their first bytes)
    of the right rank, type and size, the mask on the DWI grid; the gradient table valid for
    the DWI's volumes. Returns the dipy GradientTable."""
    dwi = _peek_header(inputs, DWI_KEY, settings)
    shape = _checked_shape(DWI_KEY, dwi.get_data_shape(), dwi.get_data_dtype(), 4, settings)
    _checked_geometry(DWI_KEY, dwi)
    mask = _peek_header(inputs, MASK_KEY, settings)
    mask_shape = _checked_shape(MASK_KEY, mask.get_data_shape(), mask.get_data_dtype(), 3, settings)
    _checked_geometry(MASK_KEY, mask)
    _same_grid(mask_shape, mask.get_best_affine(), shape, dwi.get_best_affine())
    for key in extra:
        header = _peek_header(inputs, key, settings)
        _checked_shape(key, header.get_data_shape(), header.get_data_dtype(), 3, settings)
        _checked_geometry(key, header)
    bvals, bvecs = read_gradients(
        _read_text(inputs, BVALS_KEY, settings),
        _read_text(inputs, BVECS_KEY, settings),
        shape[3],
        b0_threshold,
    )
    return gradient_table_for(bvals, bvecs, b0_threshold)


def load_subject(
    inputs: ObjectStore, workdir: Path, settings: Settings, *, b0_threshold: float
) -> Subject:
    """Download, validate and load the diffusion data of the subject rooted at ``inputs``."""
    # Fetch every small file first: a missing bvecs should not cost a multi-GB download.
    bvals_text = _read_text(inputs, BVALS_KEY, settings)
    bvecs_text = _read_text(inputs, BVECS_KEY, settings)
    _require(inputs, MASK_KEY)
    # From the stored header (a ranged read): nibabel's loader "fixes" a zero voxel size.
    _checked_geometry(DWI_KEY, _peek_header(inputs, DWI_KEY, settings))
    _checked_geometry(MASK_KEY, _peek_header(inputs, MASK_KEY, settings))

    img, dwi_path, shape = _open_checked(inputs, DWI_KEY, workdir, settings, rank=4)
    bvals, bvecs = read_gradients(bvals_text, bvecs_text, shape[3], b0_threshold)
    gtab = gradient_table_for(bvals, bvecs, b0_threshold)
    affine = np.asarray(img.affine, dtype=np.float64)
    zx, zy, zz = (float(z) for z in img.header.get_zooms()[:3])
    xform_codes = (int(img.header["qform_code"]), int(img.header["sform_code"]))

    mask_img, mask_path, mask_shape = _open_checked(inputs, MASK_KEY, workdir, settings, rank=3)
    _same_grid(mask_shape, mask_img.affine, shape, affine)
    raw_mask = _read_voxels(mask_img, mask_path, MASK_KEY, None).reshape(shape[:3])
    mask = np.isfinite(raw_mask) & (raw_mask != 0)
    if not mask.any():
        raise InvalidInput(f"{MASK_KEY} is empty (no brain voxels)")

    data = _read_voxels(img, dwi_path, DWI_KEY, np.float32)
    # Scanner or reconstruction glitches leave isolated NaN/inf samples in otherwise good data.
    # Zero is below dipy's minimum signal and gets clipped like any dropout, so the affected
    # voxels still fit; failing the whole subject would be harsher. The count is reported.
    # Beyond a small fraction of the brain's samples it is broken data, not glitches: fail.
    nonfinite = in_brain = 0
    for v in range(shape[3]):  # one volume at a time: a whole-array mask is 1 GB for HCP
        bad = ~np.isfinite(data[..., v])
        if bad.any():
            nonfinite += int(np.count_nonzero(bad))
            in_brain += int(np.count_nonzero(bad & mask))
            data[..., v][bad] = 0.0
    samples = int(np.count_nonzero(mask)) * shape[3]
    if in_brain > settings.max_nonfinite_fraction * samples:
        raise InvalidInput(
            f"{DWI_KEY} has {in_brain} NaN or infinite samples in the brain mask "
            f"({100 * in_brain / samples:.3g}% of {samples}; the limit is "
            f"{100 * settings.max_nonfinite_fraction:g}%, VOXFLEET_MAX_NONFINITE_FRACTION)"
        )
    return Subject(
        data=data,
        affine=affine,
        gtab=gtab,
        mask=mask,
        zooms=(zx, zy, zz),
        xform_codes=xform_codes,
        nonfinite_values=nonfinite,
        source=inputs.uri,
    )


def load_aparc(
    inputs: ObjectStore, workdir: Path, settings: Settings, key: str = APARC_KEY
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """The FreeSurfer label volume (``T1w/aparc+aseg.nii.gz``) as int32, and its affine."""
    img, path, shape = _open_checked(inputs, key, workdir, settings, rank=3)
    affine = np.asarray(img.affine, dtype=np.float64)
    raw = _read_voxels(img, path, key, None).reshape(shape)
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise InvalidInput(f"{key} contains NaN or infinite labels")
        rounded = np.rint(raw)
        if not np.allclose(raw, rounded, atol=1e-3):
            raise InvalidInput(f"{key} has non-integer labels; is it really a segmentation?")
        raw = rounded
    elif raw.dtype.kind not in "iub":
        raise InvalidInput(f"{key} has unsupported data type {raw.dtype}")
    return raw.astype(np.int32), affine


def resample_labels_nearest(
    labels: NDArray[np.integer[Any]],
    labels_affine: NDArray[np.floating[Any]],
    target_shape: tuple[int, int, int],
    target_affine: NDArray[np.floating[Any]],
    *,
    fill: int = 0,
) -> NDArray[np.int32]:
    """Labels on the target grid: each target voxel centre takes the label of the nearest
    source voxel centre in world coordinates; centres outside the source grid get ``fill``.

    Nearest neighbour keeps labels as labels (no interpolated, meaningless in-between ids).
    Ties (a centre exactly half-way) round up, so the result does not depend on numpy's
    round-half-to-even.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D, got shape {labels.shape}")
    # target voxel -> world -> source voxel, as one affine.
    vox2vox = np.linalg.inv(np.asarray(labels_affine, dtype=np.float64)) @ np.asarray(
        target_affine, dtype=np.float64
    )
    rot, shift = vox2vox[:3, :3], vox2vox[:3, 3]
    nx, ny, nz = target_shape
    jj, kk = np.meshgrid(np.arange(ny), np.arange(nz), indexing="ij")
    jk = np.stack([jj.ravel(), kk.ravel()]).astype(np.float64)  # (2, ny*nz)
    src_shape = np.asarray(labels.shape)[:, None]
    out = np.full(target_shape, fill, dtype=np.int32)
    # One x-plane at a time keeps the coordinate arrays small for full-size brains.
    for i in range(nx):
        coords = rot[:, :1] * float(i) + rot[:, 1:] @ jk + shift[:, None]
        idx = np.floor(coords + 0.5).astype(np.int64)
        inside = ((idx >= 0) & (idx < src_shape)).all(axis=0)
        plane = np.full(ny * nz, fill, dtype=np.int32)
        plane[inside] = labels[idx[0, inside], idx[1, inside], idx[2, inside]]
        out[i] = plane.reshape(ny, nz)
    return out
