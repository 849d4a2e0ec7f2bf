"""Input layouts of diffusion data: HCP, raw BIDS, QSIPrep derivatives (one module each over
``base.Layout``). ``detect`` names a dataset's layout; ``resolve`` turns a job's input URI into
its layout, the dataset root to open and the series' key below it."""

from __future__ import annotations

from shared.errors import InvalidInput
from shared.layouts.base import Found, Layout, SubjectFiles
from shared.layouts.bids import DWI_SUFFIXES, BidsLayout
from shared.layouts.hcp import HcpLayout
from shared.layouts.qsiprep import QsiprepLayout
from shared.settings import Settings
from shared.store import ObjectStore, open_store

#: In detection order: a QSIPrep dataset is BIDS too, so it is asked first.
LAYOUTS: dict[str, Layout] = {
    "qsiprep": QsiprepLayout(),
    "bids": BidsLayout(),
    "hcp": HcpLayout(),
}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise InvalidInput(f"unknown layout {name!r} (have: {', '.join(LAYOUTS)})") from None


def detect(store: ObjectStore) -> Layout:
    """The layout of the dataset rooted at ``store``."""
    for layout in LAYOUTS.values():
        if layout.detect(store):
            return layout
    raise InvalidInput(
        f"{store.uri}: not a BIDS dataset (no dataset_description.json), QSIPrep derivatives "
        "or HCP subjects (no */T1w/Diffusion/data.nii.gz); name one with --layout"
    )


def resolve(input_uri: str) -> tuple[Layout, str, str]:
    """(layout, dataset root URI, series key below it) of a job's input: a BIDS series is its
    ``*_dwi.nii.gz`` (the root is the folder above its ``sub-*``), anything else an HCP
    subject's folder."""
    uri = input_uri.rstrip("/")
    if not uri.endswith(DWI_SUFFIXES):
        return LAYOUTS["hcp"], uri, ""
    parts = uri.split("/")
    subject_at = next((i for i, p in enumerate(parts) if p.startswith("sub-")), None)
    if subject_at is None or subject_at == 0:
        raise InvalidInput(f"{input_uri}: a BIDS series must lie below a sub-<label> folder")
    root, key = "/".join(parts[:subject_at]), "/".join(parts[subject_at:])
    layout = LAYOUTS["qsiprep"] if "_desc-preproc_" in parts[-1] else LAYOUTS["bids"]
    return layout, root, key


def open_series(input_uri: str, settings: Settings) -> tuple[ObjectStore, SubjectFiles]:
    """The dataset root a job's input lies in, opened, and the keys of its series' files."""
    layout, root, key = resolve(input_uri)
    store = open_store(root, settings)
    return store, layout.files(store, key)


__all__ = [
    "LAYOUTS",
    "Found",
    "Layout",
    "SubjectFiles",
    "detect",
    "get_layout",
    "open_series",
    "resolve",
]
