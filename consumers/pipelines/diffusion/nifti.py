"""NIfTI images and small text files from an object store, checked before they cost memory.

Everything a user could get wrong about an input file becomes ``InvalidInput`` with a one-line
reason naming it. Header checks (rank, dimensions against the configured limits, a grid that
is a grid) run on the header alone, read from the object's first bytes, so a hostile or
mistaken input is refused without ever being downloaded or inflated.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

from shared.errors import InvalidInput, MissingInput, one_line_reason
from shared.settings import Settings
from shared.store import ObjectStore

# The text gradient tables are tiny; anything bigger is not a bval/bvec file.
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
# Compressed bytes read to find a NIfTI header (348 or 540 bytes once inflated): ample.
_HEADER_BYTES = 64 * 1024


def require(inputs: ObjectStore, key: str) -> int:
    """The object's size; a MissingInput naming the object (and the layout) if it is absent."""
    try:
        return inputs.size(key)
    except MissingInput:
        raise MissingInput(f"missing input {inputs.uri_for(key)}") from None


def checked_size(inputs: ObjectStore, key: str, settings: Settings) -> int:
    """The object's size, refused if it is absent, empty or above the input limit."""
    size = require(inputs, key)
    if size > settings.max_input_bytes:
        raise InvalidInput(
            f"{key} is {size} bytes, above the {settings.max_input_bytes}-byte input limit"
        )
    if size == 0:
        raise InvalidInput(f"{key} is empty: {inputs.uri_for(key)}")
    return size


def fetch(inputs: ObjectStore, key: str, workdir: Path, settings: Settings) -> Path:
    checked_size(inputs, key, settings)
    dest = workdir / "inputs" / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    return inputs.get_file(key, dest)


def open_nifti(path: Path, key: str) -> Any:
    try:
        img = nib.load(path)
    except _NIFTI_ERRORS as exc:
        reason = one_line_reason(exc, path, key)
        raise InvalidInput(f"{key} is not a readable NIfTI file ({reason})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidInput(f"{key} is a {type(img).__name__}, expected NIfTI")
    return img


def read_voxels(img: Any, path: Path, key: str, dtype: Any) -> NDArray[Any]:
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


def checked_shape(
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


def checked_geometry(key: str, header: Any) -> None:
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


def open_checked(
    inputs: ObjectStore, key: str, workdir: Path, settings: Settings, rank: int
) -> tuple[Any, Path, tuple[int, ...]]:
    """Fetch and open a NIfTI and check its header (rank, size limits); no voxels read yet."""
    path = fetch(inputs, key, workdir, settings)
    img = open_nifti(path, key)
    shape = checked_shape(key, img.shape, img.get_data_dtype(), rank, settings)
    return img, path, shape


def peek_header(inputs: ObjectStore, key: str, settings: Settings) -> Any:
    """The NIfTI header of ``key`` from the object's first bytes (a ranged read): the image
    itself is neither downloaded nor inflated."""
    checked_size(inputs, key, settings)
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


def read_text(inputs: ObjectStore, key: str, settings: Settings) -> str:
    size = require(inputs, key)
    limit = min(settings.max_input_bytes, _MAX_TEXT_BYTES)
    if size > limit:
        raise InvalidInput(f"{key} is {size} bytes, above the {limit}-byte input limit")
    try:
        return inputs.get_bytes(key).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput(f"{key} is not a plain-text gradient table") from None


def checked_header(
    inputs: ObjectStore, key: str, settings: Settings, rank: int
) -> tuple[Any, tuple[int, ...]]:
    """The header of ``key`` (a ranged read) and its shape, checked: rank, type, size limits
    and geometry. nibabel's loader would "fix" a zero voxel size, so this is the one check."""
    header = peek_header(inputs, key, settings)
    shape = checked_shape(key, header.get_data_shape(), header.get_data_dtype(), rank, settings)
    checked_geometry(key, header)
    return header, shape


def read_labels(
    inputs: ObjectStore, key: str, workdir: Path, settings: Settings
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """A label volume (a segmentation: FreeSurfer ids or tissue classes) as int32, and its
    affine. Float storage is accepted only where every value is a whole number."""
    img, path, shape = open_checked(inputs, key, workdir, settings, rank=3)
    affine = np.asarray(img.affine, dtype=np.float64)
    raw = read_voxels(img, path, key, None).reshape(shape)
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
