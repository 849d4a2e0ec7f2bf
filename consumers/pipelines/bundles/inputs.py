"""The inputs of the ``bundles`` and ``profiles`` jobs: committed results (tractography,
bundles) and a bundle atlas.

A tractography result is read only through its manifest: the shards it lists, each checked
against the size and SHA-256 the manifest records (a result exists only through its manifest,
and a shard that changed since is refused). The shards are loaded with their own headers
(``.trk``/``.trx`` carry the DWI grid they were tracked on) and concatenated in shard order, so
a streamline's index in the job is its index in the union of the shards.

An atlas is a folder of model bundles, ``*.trk``/``*.trx`` at its top or under ``bundles/`` (the
layout of dipy's HCP-842 ``Atlas_80_Bundles``), and optionally one whole-brain tractogram under
``whole_brain/`` that the subject is registered to; without one, the union of the model bundles
is the registration target.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.checks import check_id
from shared.errors import InvalidInput, MissingInput
from shared.manifest import Manifest, read_manifest
from shared.settings import Settings
from shared.store import ObjectStore, open_store, split_uri
from shared.store.base import sha256_file

TRACTOGRAM_SUFFIXES = (".trk", ".trx")
WHOLE_BRAIN = "whole_brain"
DOWNLOAD_THREADS = 8  # S3 GET latency dominates small shards; a few in flight hide it


def committed(input_uri: str, settings: Settings, pipeline: str, reader: str) -> Manifest:
    """The manifest of the committed ``pipeline`` result at ``input_uri``, which a ``reader``
    job reads; a one-line error for anything else."""
    parent, name = split_uri(input_uri)
    manifest = read_manifest(open_store(parent, settings), name)
    if manifest is None:
        raise MissingInput(
            f"no committed result at {input_uri} (no manifest.json): {reader} needs a finished "
            f"{pipeline} job's result prefix"
        )
    if manifest.pipeline != pipeline:
        raise InvalidInput(
            f"{input_uri} is a {manifest.pipeline!r} result; {reader} needs a {pipeline} result"
        )
    return manifest


def committed_tractography(input_uri: str, settings: Settings) -> Manifest:
    manifest = committed(input_uri, settings, "tractography", "bundles")
    if not manifest.summary.get("shards"):
        raise InvalidInput(f"tractography result {input_uri} lists no shards")
    return manifest


@dataclass(frozen=True)
class AtlasListing:
    uri: str
    bundles: dict[str, str]  # bundle name -> key in the atlas store
    whole_brain: str | None  # key of the whole-brain tractogram, if any


def list_atlas(uri: str, settings: Settings) -> AtlasListing:
    """What the atlas at ``uri`` holds, from a listing alone (nothing downloaded)."""
    store = open_store(uri, settings)
    bundles: dict[str, str] = {}
    whole: list[str] = []
    for key in store.list():
        path = PurePosixPath(key)
        if path.suffix not in TRACTOGRAM_SUFFIXES:
            continue
        folder = path.parent.as_posix()
        if folder == WHOLE_BRAIN:
            whole.append(key)
        elif folder in (".", "bundles"):
            name = path.stem
            try:
                check_id(name, "bundle name")
            except ValueError as exc:
                raise InvalidInput(f"atlas {uri}: {exc}") from None
            if name in bundles:
                raise InvalidInput(f"atlas {uri}: two model bundles named {name!r}")
            bundles[name] = key
    if not bundles:
        raise MissingInput(
            f"atlas {uri} holds no model bundles (*.trk or *.trx at its top or under bundles/)"
        )
    if len(whole) > 1:
        raise InvalidInput(f"atlas {uri}: more than one tractogram under {WHOLE_BRAIN}/")
    return AtlasListing(uri, dict(sorted(bundles.items())), whole[0] if whole else None)


def load_streamlines(path: Path) -> Any:
    """A ``.trk``/``.trx`` file as a StatefulTractogram in RAS mm, with its own header as the
    reference (no bounding-box check: atlases ship with placeholder grids)."""
    from dipy.io.streamline import load_tractogram

    sft = load_tractogram(str(path), "same", bbox_valid_check=False)
    if sft is False:  # dipy logs and returns False for a header it cannot use
        raise InvalidInput(f"{path.name}: not a readable tractogram")
    sft.to_rasmm()
    return sft


def _fetch(store: ObjectStore, key: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return store.get_file(key, dest)


def fetch_listed(
    store: ObjectStore, manifest: Manifest, keys: list[str], folder: Path
) -> list[Path]:
    """The result's objects ``keys`` (below its prefix), downloaded in parallel, each checked
    against the size and SHA-256 its manifest records."""
    listed = {entry["key"]: entry for entry in manifest.files}
    for key in keys:
        if key not in listed:
            raise InvalidInput(f"{store.uri_for(key)} is not in its result's manifest")
    with ThreadPoolExecutor(max_workers=max(1, min(DOWNLOAD_THREADS, len(keys)))) as pool:
        paths = list(pool.map(lambda k: _fetch(store, k, folder / k), keys))
    for key, path in zip(keys, paths, strict=True):
        entry = listed[key]
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise InvalidInput(f"{store.uri_for(key)} does not match its manifest entry")
    return paths


@dataclass
class Tractogram:
    streamlines: Any  # every shard's streamlines, in shard order (RAS mm)
    reference: str  # the first shard's local file: its header is the grid outputs are written on
    shards: int


def download_tractography(inputs: ObjectStore, manifest: Manifest, workdir: Path) -> Tractogram:
    """Every shard the manifest lists, verified against it, loaded and concatenated."""
    from nibabel.streamlines.array_sequence import ArraySequence

    keys = [f"{manifest.attempt}/{shard['key']}" for shard in manifest.summary["shards"]]
    paths = fetch_listed(inputs, manifest, keys, workdir / "tractography")
    tractograms = [load_streamlines(path) for path in paths]
    streamlines = ArraySequence()
    for sft in tractograms:
        streamlines.extend(sft.streamlines)
    if len(streamlines) == 0:
        raise InvalidInput(f"tractography result {inputs.uri} has no streamlines")
    return Tractogram(streamlines, str(paths[0]), len(keys))


@dataclass
class Atlas:
    listing: AtlasListing
    bundles: dict[str, Any]  # name -> streamlines (RAS mm, atlas space)
    whole_brain: Any | None
    files: list[dict[str, Any]]  # key, bytes, sha256 of every atlas file used: provenance


def download_atlas(listing: AtlasListing, settings: Settings, workdir: Path) -> Atlas:
    store = open_store(listing.uri, settings)
    keys = [*listing.bundles.values(), *([listing.whole_brain] if listing.whole_brain else [])]
    folder = workdir / "atlas"
    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(keys))) as pool:
        paths = dict(zip(keys, pool.map(lambda k: _fetch(store, k, folder / k), keys), strict=True))
    bundles = {}
    for name, key in listing.bundles.items():
        streamlines = load_streamlines(paths[key]).streamlines
        if len(streamlines) == 0:
            raise InvalidInput(f"atlas {listing.uri}: model bundle {name!r} is empty")
        bundles[name] = streamlines
    whole = None
    if listing.whole_brain is not None:
        whole = load_streamlines(paths[listing.whole_brain]).streamlines
    files = [
        {"key": key, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for key, path in paths.items()
    ]
    return Atlas(listing, bundles, whole, files)


#: The maps a tractography result carries that tract profiles sample.
PROFILE_MAPS = {"fa": "fa.nii.gz", "md": "md.nii.gz"}


def map_keys(manifest: Manifest, metrics: tuple[str, ...], uri: str) -> dict[str, str]:
    """metric -> the key of its map in the tractography result at ``uri``, from its manifest."""
    listed = {entry["key"] for entry in manifest.files}
    keys = {metric: f"{manifest.attempt}/{PROFILE_MAPS[metric]}" for metric in metrics}
    missing = [metric for metric, key in keys.items() if key not in listed]
    if missing:  # results committed before MD was written have FA alone
        raise InvalidInput(f"tractography result {uri} has no {'/'.join(missing)} map")
    return keys


def download_maps(
    inputs: ObjectStore, manifest: Manifest, metrics: tuple[str, ...], workdir: Path
) -> tuple[dict[str, Any], Any]:
    """The tractography result's maps ``metrics`` (float64) and their affine, each verified
    against the manifest: what the tract profiles sample."""
    import nibabel as nib
    import numpy as np

    keys = map_keys(manifest, metrics, inputs.uri)
    paths = fetch_listed(inputs, manifest, list(keys.values()), workdir / "maps")
    maps: dict[str, Any] = {}
    affine = None
    for metric, path in zip(keys, paths, strict=True):
        image: Any = nib.load(str(path))
        maps[metric] = np.asarray(image.dataobj, dtype=np.float64)
        affine = np.asarray(image.affine, dtype=np.float64)
    return maps, affine
