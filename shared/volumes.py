"""Which objects below a prefix are micro-CT volumes, and how a folder's TIFF files form a stack.

A campaign that lists a prefix for ``microstructure`` finds each volume once, whatever its
format: a folder holding ``zarr.json`` (a Zarr v3 array or group, an OME-Zarr 0.5 image),
``.zgroup`` or ``.zarray`` (Zarr v2, OME-Zarr 0.4, an xarray dataset) is one volume and is not
looked into (an OME-Zarr image is one volume, not one per level); a folder whose TIFF files are
one numbered series of single-page slices is one volume (not thousands); a multi-page
``.tif``/``.tiff`` file is one; every ``.h5``/``.hdf5``/``.nxs`` file is one. Folders whose names
start with ``_`` or ``.`` are voxfleet's own (a phantom's ``_truth``, ``_campaigns``) or hidden,
and are skipped.

Everything is decided from keys, except whether a TIFF file holds one page or many: its header
answers that (one ranged read, two for a file whose first directory sits at its end). The
consumer's TIFF reader follows the same rules (``tiff_series``), so what discovery calls one
volume is what the job opens. Standard library only: the producer imports this.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shared.layouts.base import Found
from shared.store import ObjectStore

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs")
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # in the order they are asked for
SKIPPED = ("_", ".")  # folder-name prefixes that hold no inputs
MAX_DEPTH = 8  # folders below the listed prefix: deeper is a mistake, not a dataset
LOOK_THREADS = 32  # S3 latency dominates discovery; this many requests in flight hide it
_HEAD = 64 * 1024  # a TIFF header and, almost always, its first directory
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)(?P<suffix>\.tiff?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Series:
    """TIFF files named ``{stem}{number}{suffix}``, in the order of their numbers."""

    stem: str
    suffix: str
    names: tuple[str, ...]
    numbers: tuple[int, ...]

    @property
    def pattern(self) -> str:
        return f"{self.stem}*{self.suffix}"

    def problem(self) -> str:
        """Why these files are not one stack's slices in order ('' when they are)."""
        for a, b, name_a, name_b in zip(
            self.numbers, self.numbers[1:], self.names, self.names[1:], strict=False
        ):
            if a == b:
                return f"{name_a} and {name_b} have the same number"
            if b != a + 1:
                missing = a + 1 if b == a + 2 else f"{a + 1}..{b - 1}"
                return f"a gap in the numbering: {name_a}, then {name_b} (no slice {missing})"
        return ""


def is_tiff(name: str) -> bool:
    return name.lower().endswith(TIFF_SUFFIXES)


def is_hdf5(name: str) -> bool:
    return name.lower().endswith(HDF5_SUFFIXES)


def tiff_series(names: Iterable[str]) -> tuple[list[Series], list[str]]:
    """The TIFF ``names`` as numbered series (natural order: by the last number in the name)
    and the names that carry no number."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    plain: list[str] = []
    for name in names:
        if not is_tiff(name):
            continue
        match = _NUMBERED.match(name)
        if match is None:
            plain.append(name)
            continue
        key = (match["stem"], match["suffix"].lower())
        groups.setdefault(key, []).append((int(match["number"]), name))
    series = [
        Series(stem, suffix, tuple(n for _, n in members), tuple(i for i, _ in members))
        for (stem, suffix), found in sorted(groups.items())
        for members in [sorted(found)]
    ]
    return series, sorted(plain)


def tiff_page_count(store: ObjectStore, key: str) -> int | None:
    """1 or 2 (two or more pages) from a TIFF file's header and first directory; None for a
    file that is no TIFF. Classic TIFF and BigTIFF, either byte order."""
    head = store.head_bytes(key, _HEAD)

    def at(offset: int, size: int) -> bytes:
        if offset + size <= len(head):
            return head[offset : offset + size]
        return store.get_range(key, offset, offset + size)

    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 16:
        return None
    magic = struct.unpack(f"{order}H", head[2:4])[0]
    if magic == 42:
        count_fmt, entry, offset_fmt = "H", 12, "I"
        first = struct.unpack(f"{order}I", head[4:8])[0]
    elif magic == 43:
        count_fmt, entry, offset_fmt = "Q", 20, "Q"
        first = struct.unpack(f"{order}Q", head[8:16])[0]
    else:
        return None
    count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    raw = at(first, count_size)
    if len(raw) < count_size:
        return None
    entries = struct.unpack(f"{order}{count_fmt}", raw)[0]
    raw = at(first + count_size + entries * entry, offset_size)
    if len(raw) < offset_size:
        return None
    return 1 if struct.unpack(f"{order}{offset_fmt}", raw)[0] == 0 else 2


def _join(folder: str, name: str) -> str:
    """``name`` below ``folder`` (a key, or a URI: its leading ``/`` and ``s3://`` kept)."""
    return f"{folder.rstrip('/')}/{name}" if folder.strip("/") else name


def _marker(store: ObjectStore, folder: str) -> str | None:
    for marker in ZARR_MARKERS:
        if store.exists(_join(folder, marker)):
            return marker
    return None


def _files_found(
    store: ObjectStore, root_uri: str, folder: str, files: list[str], pool: ThreadPoolExecutor
) -> list[Found]:
    """The volumes among one folder's files: HDF5 files, multi-page TIFFs, and the folder
    itself when its single-page TIFFs are one stack."""
    base = _join(root_uri, folder) if folder else root_uri.rstrip("/")
    found = [Found(f"{base}/{name}", name) for name in files if is_hdf5(name)]
    series, plain = tiff_series(files)
    # A group's first file stands for all of it: slices are single pages, volumes many.
    groups = [(s.pattern, s.names) for s in series] + [(name, (name,)) for name in plain]
    firsts = [names[0] for _, names in groups]
    pages = list(pool.map(lambda n: tiff_page_count(store, _join(folder, n)), firsts))
    # A lone file that is no readable TIFF goes to the job, whose reader says what is wrong.
    whole = [
        n == 2 or (n is None and label in plain)
        for (label, _), n in zip(groups, pages, strict=True)
    ]
    slices = [group for group, w in zip(groups, whole, strict=True) if not w]
    multi = [name for (_, names), w in zip(groups, whole, strict=True) if w for name in names]
    found.extend(Found(f"{base}/{name}", name) for name in multi)
    name = base.rsplit("/", 1)[-1]
    if len(slices) == 1 and not multi:
        names = slices[0][1]
        problem = "" if len(names) > 1 else f"{base}/{names[0]}: a single 2D image, not a volume"
        found.append(Found(base, name, problem))
    elif slices:
        shown = ", ".join(label for label, _ in slices[:3])
        more = f" (+{len(slices) - 3} more)" if len(slices) > 3 else ""
        beside = " beside multi-page TIFFs" if multi else ""
        found.append(
            Found(
                base,
                name,
                f"{base}: TIFF slices that are not one stack ({shown}{more}{beside}); "
                "give each stack a folder of its own",
            )
        )
    return found


def discover_volumes(store: ObjectStore, root_uri: str) -> list[Found]:
    """Every volume below ``store`` (rooted at ``root_uri``), in key order; a folder of TIFF
    files that is no one stack (or a lone 2D image) is a ``Found`` with its problem."""
    found: list[Found] = []
    level = [""]
    with ThreadPoolExecutor(max_workers=LOOK_THREADS) as pool:
        for _ in range(MAX_DEPTH + 1):
            markers = list(pool.map(lambda folder: _marker(store, folder), level))
            volumes = [f for f, m in zip(level, markers, strict=True) if m is not None]
            found.extend(Found(_join(root_uri, f), f.rsplit("/", 1)[-1]) for f in volumes if f)
            if "" in volumes:  # the listed prefix is itself a Zarr volume
                found.append(Found(root_uri.rstrip("/"), root_uri.rstrip("/").rsplit("/", 1)[-1]))
            rest = [f for f, m in zip(level, markers, strict=True) if m is None]
            listings = list(pool.map(store.entries, rest))
            for folder, (files, _) in zip(rest, listings, strict=True):
                if any(is_tiff(n) or is_hdf5(n) for n in files):
                    found.extend(_files_found(store, root_uri, folder, files, pool))
            level = [
                _join(folder, sub)
                for folder, (_, subs) in zip(rest, listings, strict=True)
                for sub in subs
                if not sub.startswith(SKIPPED)
            ]
            if not level:
                break
    return sorted(found, key=lambda f: f.input_uri)
