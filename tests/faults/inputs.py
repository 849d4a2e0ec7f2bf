"""Tiny inputs for the bad-input catalogue and the security tests, and the ways to break them.

A subject here is 6x6x6 voxels with 2 b0 and 20 diffusion-weighted volumes: enough for a tensor
fit (the one good job the security tests run) and for CSD at ``sh_order_max=4`` (15
coefficients), small enough that a job that gets as far as a cluster costs seconds.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

DWI = "T1w/Diffusion"
SHAPE = (6, 6, 6)
N_B0, N_DWI = 2, 20
WM_LABEL = 2  # cerebral white matter in FreeSurfer's aseg


def _gradients(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    dirs = rng.normal(size=(N_DWI, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvecs = np.vstack([np.zeros((N_B0, 3)), dirs])
    bvals = np.r_[np.zeros(N_B0), np.full(N_DWI, 1000.0)]
    return bvals, bvecs


def write_subject(root: Path, name: str = "100307", seed: int = 3) -> Path:
    """An HCP-layout subject below ``root/name``; returns its folder."""
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / DWI).mkdir(parents=True)
    bvals, bvecs = _gradients(rng)
    # A single-tensor signal along x with noise: positive, finite, fits.
    d = np.diag([1.7e-3, 0.3e-3, 0.3e-3])
    signal = 1000.0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, d, bvecs))
    data = signal * (1 + 0.02 * rng.standard_normal((*SHAPE, len(bvals))))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), folder / DWI / "data.nii.gz")
    (folder / DWI / "bvals").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (folder / DWI / "bvecs").write_text(
        "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in bvecs.T)
    )
    mask = np.ones(SHAPE, dtype=np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), folder / DWI / "nodif_brain_mask.nii.gz")
    labels = np.full(SHAPE, 3, dtype=np.int32)  # cortex
    labels[1:5, 1:5, 1:5] = WM_LABEL
    nib.save(nib.Nifti1Image(labels, affine), folder / "T1w" / "aparc+aseg.nii.gz")
    return folder


def copy_subject(good: Path, root: Path, name: str) -> Path:
    folder = root / name
    shutil.copytree(good, folder)
    return folder


def write_volume(path: Path, data: np.ndarray | None = None, chunks: int = 8) -> Path:
    """A Zarr v3 array (the microstructure input)."""
    import zarr

    if data is None:
        rng = np.random.default_rng(0)
        data = rng.integers(100, 200, size=(16, 16, 16)).astype(np.uint16)
    array = zarr.create_array(
        store=str(path),
        shape=data.shape,
        chunks=(chunks,) * data.ndim,
        dtype=data.dtype,
        overwrite=True,
    )
    array[...] = data
    return path


# --- breaking a subject (each takes the subject's folder) -----------------------------------


def _nifti(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(folder / key)
    return np.asarray(img.dataobj), img.affine


def delete(key: str) -> Callable[[Path], None]:
    return lambda folder: (folder / key).unlink()


def garbage(key: str) -> Callable[[Path], None]:
    return lambda folder: (folder / key).write_bytes(b"this is not a NIfTI file\n" * 100)


def truncate(key: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / key
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return mutate


def empty(key: str) -> Callable[[Path], None]:
    return lambda folder: (folder / key).write_bytes(b"")


def text(key: str, content: str) -> Callable[[Path], None]:
    return lambda folder: (folder / key).write_text(content)


def edit_table(key: str, edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        table = np.loadtxt(folder / key, ndmin=2)
        table = edit(table.copy())
        (folder / key).write_text(
            "".join(" ".join(f"{v:.6g}" for v in row) + "\n" for row in table)
        )

    return mutate


def zero_bvec(table: np.ndarray) -> np.ndarray:
    table[:, N_B0 + 3] = 0.0  # a diffusion-weighted volume without a direction
    return table


def long_bvec(table: np.ndarray) -> np.ndarray:
    table[:, N_B0 + 5] *= 2.5
    return table


def nan_bval(table: np.ndarray) -> np.ndarray:
    table[0, 4] = np.nan
    return table


def no_b0(folder: Path) -> None:
    """Every volume weighted (the b0s get b=1000 and a direction): nothing to normalise by."""
    edit_table(f"{DWI}/bvals", lambda t: np.where(np.arange(t.shape[1]) < N_B0, 1000.0, t))(folder)

    def directions(table: np.ndarray) -> np.ndarray:
        table[:, :N_B0] = [[1.0], [0.0], [0.0]]
        return table

    edit_table(f"{DWI}/bvecs", directions)(folder)


def drop_last_bval(table: np.ndarray) -> np.ndarray:
    return table[:, :-1]


def nifti(key: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """Rewrite an image with ``change`` applied to its voxels (same affine)."""

    def mutate(folder: Path) -> None:
        data, affine = _nifti(folder, key)
        nib.save(nib.Nifti1Image(change(data), affine), folder / key)

    return mutate


def nan_flood(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    data[..., 5:9] = np.nan  # 4 of 22 volumes: 18% of the brain's samples
    data[0, 0, 0, 10] = np.inf
    return data


def header_only(
    key: str, shape: tuple[int, ...], dtype: type = np.float32
) -> Callable[[Path], None]:
    """A NIfTI whose header claims ``shape`` and that holds almost no data: a size limit must
    refuse it from the header, before any voxel is inflated."""

    def mutate(folder: Path) -> None:
        header = nib.Nifti1Header()
        header.set_data_dtype(dtype)
        header.set_data_shape(shape)
        blob = io.BytesIO()
        header.write_to(blob)
        (folder / key).write_bytes(gzip.compress(blob.getvalue() + b"\0" * 4 + b"x" * 64))

    return mutate


# --- breaking a volume (each takes the array's folder) --------------------------------------


def zarr_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        meta = json.loads((path / "zarr.json").read_text())
        out = change(meta)
        (path / "zarr.json").write_text(out if isinstance(out, str) else json.dumps(out))

    return mutate


def corrupt_chunks(path: Path) -> None:
    for chunk in (path / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"\x00garbage" + chunk.read_bytes()[:7])


def replace_with_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_bytes(b"\x1f\x8b not a Zarr array")


# --- a volume in another format (each replaces the array's folder) ---------------------------

PLANE = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)


def replace_with_tiffs(slices: dict[str, np.ndarray]) -> Callable[[Path], None]:
    """The folder becomes a TIFF stack: one file per name."""

    def mutate(path: Path) -> None:
        import tifffile

        shutil.rmtree(path)
        path.mkdir()
        for name, plane in slices.items():
            tifffile.imwrite(path / name, plane)

    return mutate


def replace_with_hdf5(datasets: dict[str, np.ndarray]) -> Callable[[Path], None]:
    """The folder holds one HDF5 file (a scan's folder), with these datasets."""

    def mutate(path: Path) -> None:
        import h5py  # type: ignore[import-untyped]

        shutil.rmtree(path)
        path.mkdir()
        with h5py.File(path / "scan.h5", "w") as f:
            for name, data in datasets.items():
                f.create_dataset(name, data=data)

    return mutate


def replace_with_ome_zarr(shapes: list[tuple[int, int, int]]) -> Callable[[Path], None]:
    """The folder becomes an OME-Zarr 0.5 image whose level k has ``shapes[k]`` and is
    declared a downsampling of level 0 by 2**k."""

    def mutate(path: Path) -> None:
        import zarr

        shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        datasets: list[Any] = []
        for level, shape in enumerate(shapes):
            group.create_array(f"s{level}", shape=shape, dtype="u2")
            scale = [float(2**level)] * 3
            datasets.append(
                {
                    "path": f"s{level}",
                    "coordinateTransformations": [{"type": "scale", "scale": scale}],
                }
            )
        axes: list[Any] = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"axes": axes, "datasets": datasets}],
        }

    return mutate
