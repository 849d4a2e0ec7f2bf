"""The two inputs of a ``bundles`` job: a committed tractography result and a bundle atlas.

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


def committed_tractography(input_uri: str, settings: Settings) -> Manifest:
    """The manifest of the committed tractography result at ``input_uri``; a one-line
    ``InvalidInput`` for anything else."""
    parent, name = split_uri(input_uri)
    manifest = read_manifest(open_store(parent, settings), name)
    if manifest is None:
        raise MissingInput(
            f"no committed result at {input_uri} (no manifest.json): bundles needs a finished "
            "tractography job's result prefix"
        )
    if manifest.pipeline != "tractography":
        raise InvalidInput(
            f"{input_uri} is a {manifest.pipeline!r} result; bundles needs a tractography result"
        )
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


@dataclass
class Tractogram:
    streamlines: Any  # every shard's streamlines, in shard order (RAS mm)
    reference: str  # the first shard's local file: its header is the grid outputs are written on
    shards: int


def download_tractography(inputs: ObjectStore, manifest: Manifest, workdir: Path) -> Tractogram:
    """Every shard the manifest lists, verified against it, loaded and concatenated."""
    from nibabel.streamlines.array_sequence import ArraySequence

    listed = {entry["key"]: entry for entry in manifest.files}
    keys = [f"{manifest.attempt}/{shard['key']}" for shard in manifest.summary["shards"]]
    for key in keys:
        if key not in listed:
            raise InvalidInput(f"shard {key} is in the summary but not in the manifest's files")
    folder = workdir / "tractography"
    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(keys))) as pool:
        paths = list(pool.map(lambda k: _fetch(inputs, k, folder / k), keys))
    for key, path in zip(keys, paths, strict=True):
        entry = listed[key]
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise InvalidInput(f"shard {inputs.uri_for(key)} does not match its manifest entry")
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


#: The maps a tractography result carries that tract profiles sample (results committed
#: before MD was written have FA alone: their profiles are FA's).
PROFILE_MAPS = {"fa": "fa.nii.gz", "md": "md.nii.gz"}


def download_maps(
    inputs: ObjectStore, manifest: Manifest, workdir: Path
) -> tuple[dict[str, Any], Any]:
    """The tractography result's FA and MD volumes (float64) and their affine, each verified
    against the manifest: what the tract profiles sample."""
    import nibabel as nib
    import numpy as np

    listed = {entry["key"]: entry for entry in manifest.files}
    maps: dict[str, Any] = {}
    affine = None
    for metric, name in PROFILE_MAPS.items():
        key = f"{manifest.attempt}/{name}"
        if key not in listed:
            continue
        path = _fetch(inputs, key, workdir / "maps" / name)
        if sha256_file(path) != listed[key]["sha256"]:
            raise InvalidInput(f"{inputs.uri_for(key)} does not match its manifest entry")
        image: Any = nib.load(str(path))
        maps[metric] = np.asarray(image.dataobj, dtype=np.float64)
        affine = np.asarray(image.affine, dtype=np.float64)
    if not maps:
        raise InvalidInput(f"tractography result {inputs.uri} has no FA map to profile")
    return maps, affine
