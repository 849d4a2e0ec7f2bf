"""Which software made a result, from which input objects: the ``provenance`` of every manifest.

- ``software()``: voxfleet's version and git commit, Python's, and the versions of the
  libraries whose code computes the numbers (``PACKAGES``), as the consumer that committed the
  job has them installed (its workers run the same environment: the local cluster forks the
  consumer's, and the image is one for both elsewhere). The commit is ``VOXFLEET_GIT_COMMIT``
  where set (the image bakes it in at build time), else the checkout's own ``git rev-parse``
  when voxfleet runs from one, else unknown. ``VOXFLEET_IMAGE_DIGEST``: the image's digest,
  which an image cannot know about itself; the deployment that pins the image by digest sets
  it (infra/k8s/consumer.yaml, infra/compose.yaml).
- ``objects(store, keys)`` and ``listing(store)``: the input objects a job read, with their
  sizes and ETags (S3's, or a local file's modification time and size), so that a later
  reader can tell whether the inputs still are what the result was computed from. A volume
  of thousands of chunk objects is summarised: their count, total size and one SHA-256 over
  the sorted ``key size etag`` lines.

What enters the job key is not this but the pipeline's ``version`` (``shared.params``): bumped
by hand when a change makes results differ (a new default, a fixed bug that moves numbers, a
new output). A library upgrade that changes nothing we publish does not re-run a campaign; its
versions are recorded here, so that a difference can still be traced.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from shared.settings import Settings
from shared.store import ObjectStore, open_store, split_uri

PACKAGES = (
    "dipy",
    "itk-core",
    "itk-filtering",
    "numba",
    "numpy",
    "scipy",
    "nibabel",
    "zarr",
    "ome-zarr",
    "trx-python",
    "tifffile",
    "h5py",
    "dask",
    "distributed",
    "celery",
)
LISTED_OBJECTS = 32  # an input of more objects than this is summarised by its digest
_CHECKOUT = Path(__file__).resolve().parents[1]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(settings: Settings) -> str | None:
    """The commit voxfleet runs from, with ``-dirty`` when the checkout has changes."""
    if settings.git_commit:
        return settings.git_commit
    if not (_CHECKOUT / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(_CHECKOUT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(_CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if changed else head


@functools.cache
def _packages() -> dict[str, str]:
    return {name: v for name in PACKAGES if (v := _version(name))}


@functools.cache
def _checkout_commit() -> str | None:
    return git_commit(Settings())


def software(settings: Settings) -> dict[str, Any]:
    """What this process computes with; the same for every job a consumer runs."""
    return {
        "voxfleet": _version("voxfleet"),
        "git_commit": settings.git_commit or _checkout_commit(),
        "python": platform.python_version(),
        "image_digest": settings.image_digest,
        "packages": _packages(),
    }


def objects(store: ObjectStore, keys: list[str]) -> dict[str, Any]:
    """The objects ``keys`` below ``store`` (a few files: a diffusion series), one stat each."""
    return {"uri": store.uri, "objects": [store.stat(key).as_dict() for key in keys]}


def listing(store: ObjectStore) -> dict[str, Any]:
    """Every object below ``store`` (a Zarr array, a TIFF stack): one listing, no reads."""
    found = list(store.stats())
    lines = "".join(f"{s.key} {s.bytes} {s.etag}\n" for s in sorted(found, key=lambda s: s.key))
    summary: dict[str, Any] = {
        "uri": store.uri,
        "count": len(found),
        "bytes": sum(s.bytes for s in found),
        "sha256": hashlib.sha256(lines.encode()).hexdigest(),
    }
    if len(found) <= LISTED_OBJECTS:
        summary["objects"] = [s.as_dict() for s in found]
    return summary


def stored(uri: str, settings: Settings) -> dict[str, Any]:
    """``listing`` of the folder (or prefix) at ``uri``; ``objects`` of the one object there
    when it is a file (an HDF5 file, a multi-page TIFF)."""
    found = listing(open_store(uri, settings))
    if found["count"]:
        return found
    parent, name = split_uri(uri)
    return objects(open_store(parent, settings), [name])
