"""Bundle data from dipy's wheel, written the way voxfleet's jobs read it.

dipy ships ``minimal_bundles.zip``: 5 subjects x 3 bundles (AF_L, CST_R, CC_ForcepsMajor) of
50 streamlines each, in RAS mm. From it this writes an *atlas* (a folder of model bundles, and
optionally ``whole_brain/``) and a committed *tractography result* (shards plus a manifest, as
the ``tractography`` job commits them, with FA and MD maps for the tract profiles), so a
``bundles`` job can run with no download at all.
Only nibabel and the standard library are used: the producer never imports dipy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.streamlines.array_sequence import ArraySequence
from nibabel.streamlines.tractogram import Tractogram
from nibabel.streamlines.trk import TrkFile

from shared.manifest import MANIFEST, Manifest
from shared.store import ObjectInfo, ObjectStore

BUNDLE_NAMES = ("AF_L", "CST_R", "CC_ForcepsMajor")
SUBJECTS = (1, 2, 3, 4, 5)


def minimal_bundles_zip() -> Path:
    """The zip inside the installed dipy wheel (found without importing dipy)."""
    spec = importlib.util.find_spec("dipy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dipy is not installed: minimal_bundles ships inside its wheel")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/files/minimal_bundles.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this dipy install")
    return path


def read_minimal_bundles() -> tuple[dict[int, dict[str, ArraySequence]], dict[str, Any]]:
    """``{subject: {bundle: streamlines}}`` (RAS mm, float32) and the .trk header they share."""
    found: dict[int, dict[str, ArraySequence]] = {}
    header: dict[str, Any] = {}
    with zipfile.ZipFile(minimal_bundles_zip()) as archive:
        for subject in SUBJECTS:
            found[subject] = {}
            for name in BUNDLE_NAMES:
                trk = nib.streamlines.load(io.BytesIO(archive.read(f"sub_{subject}/{name}.trk")))
                found[subject][name] = trk.streamlines
                header = dict(trk.header)
    return found, header


def trk_bytes(streamlines: ArraySequence, header: dict[str, Any]) -> bytes:
    """Streamlines (RAS mm) as a .trk file with ``header``'s grid."""
    tractogram = Tractogram(streamlines, affine_to_rasmm=np.eye(4))
    with tempfile.TemporaryDirectory(prefix="voxfleet-trk-") as tmp:
        path = Path(tmp) / "out.trk"
        TrkFile(tractogram, header=header).save(str(path))
        return path.read_bytes()


def write_atlas(
    store: ObjectStore,
    bundles: dict[str, ArraySequence],
    header: dict[str, Any],
    whole_brain: ArraySequence | None = None,
) -> list[ObjectInfo]:
    """An atlas folder: ``NAME.trk`` per model bundle, ``whole_brain/whole_brain.trk``."""
    written = [store.put_bytes(f"{name}.trk", trk_bytes(s, header)) for name, s in bundles.items()]
    if whole_brain is not None:
        written.append(
            store.put_bytes("whole_brain/whole_brain.trk", trk_bytes(whole_brain, header))
        )
    return written


def write_tractography_result(
    results: ObjectStore,
    subject: str,
    streamlines: ArraySequence,
    header: dict[str, Any],
    *,
    shards: int = 2,
) -> str:
    """A committed tractography result holding ``streamlines`` in ``shards`` contiguous .trk
    shards, with a manifest listing every shard's size and checksum. Returns its prefix below
    ``results`` (``{subject}/tractography/{key}``); the key is a digest of the content, so the
    same streamlines always land at the same prefix (and commit once)."""
    bounds = np.linspace(0, len(streamlines), shards + 1).astype(int)
    blobs = [trk_bytes(streamlines[a:b], header) for a, b in itertools.pairwise(bounds)]
    key = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blobs)).hexdigest()
    prefix = f"{subject}/tractography/{key[:16]}"
    job = results.child(prefix)
    attempt = "synthetic"
    files, summary_shards = [], []
    for i, blob in enumerate(blobs):
        shard_key = f"shards/sl-{i:04d}.trk"
        info = job.put_bytes(f"{attempt}/{shard_key}", blob)
        files.append(info.as_dict())
        summary_shards.append(
            {
                "key": shard_key,
                "seed_start": int(bounds[i]),
                "seed_stop": int(bounds[i + 1]),
                "streamlines": int(bounds[i + 1] - bounds[i]),
                "bytes": info.bytes,
                "sha256": info.sha256,
            }
        )
    maps, affine = tensor_maps(streamlines)
    for name, values in maps.items():
        files.append(job.put_bytes(f"{attempt}/{name}", nifti_gz_bytes(values, affine)).as_dict())
    manifest = Manifest(
        job_key=key,
        job_id=f"synthetic-{key[:12]}",
        pipeline="tractography",
        pipeline_version="1",
        subject=subject,
        input_uri=f"{results.uri}/{subject}",
        params={"source": "dipy minimal_bundles"},
        attempt=attempt,
        files=files,
        summary={"shards": summary_shards, "streamlines": len(streamlines)},
    )
    job.put_if_absent(MANIFEST, manifest.to_bytes())
    return prefix


VOXEL_MM = 2.0  # the maps' grid


def tensor_maps(streamlines: ArraySequence) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """FA and MD volumes on a 2 mm grid around ``streamlines`` (the .trk headers of dipy's
    minimal bundles carry no grid), as a tractography result carries them for tract profiles:
    smooth and varying along every axis (so a profile has a shape), FA in (0.15, 0.85) and MD
    around 0.8e-3 mm^2/s like white matter. Returns the maps and their voxel-to-RAS affine."""
    points = streamlines.get_data()
    low = np.floor(points.min(axis=0)) - 4 * VOXEL_MM
    shape = tuple(int(n) for n in np.ceil((points.max(axis=0) + 4 * VOXEL_MM - low) / VOXEL_MM))
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = low
    grid = np.meshgrid(*(np.linspace(0, np.pi, n) for n in shape), indexing="ij")
    wave = np.sin(grid[0] * 1.5) * np.cos(grid[1]) + 0.5 * np.sin(grid[2] * 2.0)
    fa = 0.5 + 0.35 * np.tanh(wave)
    md = 0.8e-3 * (1.2 - 0.4 * fa)
    return {"fa.nii.gz": fa.astype(np.float32), "md.nii.gz": md.astype(np.float32)}, affine


def nifti_gz_bytes(values: np.ndarray, affine: np.ndarray) -> bytes:
    """A volume with its voxel-to-RAS affine as .nii.gz bytes."""
    import gzip

    return gzip.compress(nib.Nifti1Image(values, affine).to_bytes(), mtime=0)


def merged(bundles: dict[str, ArraySequence]) -> ArraySequence:
    """The bundles concatenated in name order: a small "whole brain" whose truth is known."""
    whole = ArraySequence()
    for name in sorted(bundles):
        whole.extend(bundles[name])
    return whole
