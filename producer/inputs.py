"""Where a campaign's inputs come from: a CSV/TXT manifest, or a listing of a prefix.

Each input becomes a row (line number, input URI, subject, per-row parameters). Listing a prefix
finds the series of a diffusion layout (``shared.layouts``: HCP, raw BIDS, QSIPrep; one row per
series, its id as the subject), the micro-CT volumes of every format the microstructure readers
know (``shared.volumes``: Zarr, OME-Zarr, TIFF stacks, HDF5; one row per volume) or, for the
other pipelines with an ``input_marker`` (and with ``--marker``), the folders that hold that
file. Nothing is enqueued until every manifest row has been turned into a valid JobSpec; a bad
row is reported by its line number.
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput
from shared.layouts import LAYOUTS, detect, get_layout
from shared.params import PIPELINE_PARAMS
from shared.settings import Settings
from shared.store import open_store, split_uri
from shared.volumes import discover_volumes

MANIFEST_SUFFIXES = (".csv", ".txt", ".tsv")
INPUT_COLUMNS = ("input", "input_uri")
MAX_ROWS = 1_000_000  # a manifest bigger than this is a mistake, not a campaign
HEAD_THREADS = 32  # S3 HEAD latency dominates discovery; this many in flight hide it
#: Pipelines whose listed inputs are volumes in any format, not folders holding one marker file
#: (unless ``--marker`` names one: then only the folders holding it, as for the others).
VOLUME_PIPELINES = frozenset({"microstructure"})


@dataclass(frozen=True)
class InputRow:
    line: int  # 1-based line in the manifest; 0 for a listed input
    input_uri: str
    subject: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # a row that cannot be read or run; reported with the others


@dataclass(frozen=True)
class Inputs:
    """What ``--inputs`` named: its rows, and how they were found."""

    rows: list[InputRow]
    #: "manifest" (bad rows are the user's typos: they stop the submit), "marker" (folders
    #: holding a pipeline's marker file, or the volumes found by their format; one that cannot
    #: run, a lone 2D TIFF, is left out and reported), or the diffusion layout's name ("hcp",
    #: "bids", "qsiprep"; a series that cannot run is left out and reported).
    found_by: str

    @property
    def from_manifest(self) -> bool:
        return self.found_by == "manifest"


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES)


def _read_text(source: str, settings: Settings) -> str:
    parent, name = split_uri(source)
    try:
        return open_store(parent, settings).get_bytes(name).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{source}: not UTF-8 text") from None


def _resolve(value: str, base: str) -> str:
    """Relative paths in a manifest are relative to the manifest's own folder."""
    if "://" in value or value.startswith("/"):
        return value
    return f"{base.rstrip('/')}/{value}"


def read_manifest_rows(source: str, settings: Settings) -> list[InputRow]:
    text = _read_text(source, settings)
    base = split_uri(source)[0]
    if source.lower().endswith(".txt"):
        rows = [
            InputRow(number, _resolve(line.strip(), base))
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    else:
        rows = _csv_rows(text, base, delimiter="\t" if source.lower().endswith(".tsv") else ",")
    if not rows:
        raise InvalidInput(f"{source}: no inputs")
    if len(rows) > MAX_ROWS:
        raise InvalidInput(f"{source}: {len(rows)} rows is more than the limit of {MAX_ROWS}")
    return rows


def _csv_rows(text: str, base: str, delimiter: str) -> list[InputRow]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InvalidInput("manifest is empty") from None
    except csv.Error as exc:
        raise InvalidInput(f"line 1: {exc}") from None
    column = next((c for c in INPUT_COLUMNS if c in header), None)
    if column is None:
        raise InvalidInput(f"line 1: the header needs an 'input' column, got {header!r}")
    if len(set(header)) != len(header) or "" in header:
        raise InvalidInput(f"line 1: empty or repeated column names in {header!r}")
    rows: list[InputRow] = []
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                problem = f"{len(record)} fields, header has {len(header)}"
                rows.append(InputRow(line, "", problem=problem))
                continue
            values = dict(zip(header, (cell.strip() for cell in record), strict=True))
            uri = values.pop(column)
            if not uri:
                rows.append(InputRow(line, "", problem=f"empty {column!r}"))
                continue
            subject = values.pop("subject", "")
            params = {k: v for k, v in values.items() if v != ""}
            rows.append(InputRow(line, _resolve(uri, base), subject, params))
    except csv.Error as exc:
        raise InvalidInput(f"line {reader.line_num}: {exc}") from None
    return rows


def marker_folders(prefix: str, marker: str, settings: Settings) -> list[InputRow]:
    """One row per folder below ``prefix`` that holds ``marker`` (a Zarr array's ``zarr.json``,
    a committed result's ``manifest.json``): the inputs of the pipelines that are no diffusion
    layout's."""
    store = open_store(prefix, settings)
    candidates = store.children()
    with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
        found = list(pool.map(lambda name: store.exists(f"{name}/{marker}"), candidates))
    rows = [
        InputRow(0, f"{prefix.rstrip('/')}/{name}", name)
        for name, ok in zip(candidates, found, strict=True)
        if ok
    ]
    if not rows:
        raise InvalidInput(f"no inputs below {prefix}: no folder holds {marker!r}")
    return rows


def _some_usable(rows: list[InputRow], where: str) -> list[InputRow]:
    """``rows``, unless not one of them can run."""
    bad = [row.problem for row in rows if row.problem]
    if len(bad) == len(rows):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InvalidInput(f"nothing usable below {where}: {bad[0]}{more}")
    return rows


def volume_rows(prefix: str, settings: Settings) -> list[InputRow]:
    """One row per micro-CT volume below ``prefix``, whatever its format; a folder of TIFF files
    that is no one stack (or a lone 2D image) is a row with its problem, left out and reported."""
    found = discover_volumes(open_store(prefix, settings), prefix)
    rows = [InputRow(0, f.input_uri, f.subject, problem=f.problem) for f in found]
    if not rows:
        raise InvalidInput(
            f"no inputs below {prefix}: no Zarr array or group, OME-Zarr image, TIFF stack, "
            "multi-page TIFF or HDF5 file"
        )
    return _some_usable(rows, prefix)


def layout_series(prefix: str, layout: str | None, settings: Settings) -> Inputs:
    """One row per diffusion series below ``prefix``, in its detected (or the named) layout.

    A series that cannot run (no DWI for a subject, no .bval) is a row with its problem: the
    plan reports it by name and goes ahead with the others, unless none is left.
    """
    store = open_store(prefix, settings)
    if layout is not None:
        chosen = get_layout(layout)
    else:
        try:
            chosen = detect(store)
        except InvalidInput as exc:
            raise InvalidInput(f"{exc} ({'|'.join(LAYOUTS)})") from None
    rows = [
        InputRow(0, found.input_uri, found.subject, problem=found.problem)
        for found in chosen.discover(store, prefix)
    ]
    if not rows:
        raise InvalidInput(f"no inputs below {prefix}: no {chosen.name} series found")
    return Inputs(_some_usable(rows, f"{prefix} ({chosen.name})"), chosen.name)


def input_rows(
    source: str,
    pipeline: str,
    settings: Settings,
    *,
    marker: str | None = None,
    layout: str | None = None,
) -> Inputs:
    """The rows of ``--inputs`` for ``pipeline``: a manifest's; or, listing a prefix, the folders
    holding the pipeline's ``input_marker`` (or ``marker``) where it has one, else the series of
    the diffusion layout detected (or named by ``layout``)."""
    default = PIPELINE_PARAMS[pipeline].input_marker
    if default is None and marker is not None:
        raise InvalidInput(
            f"--marker is not for {pipeline}: its inputs are found by their layout "
            f"(--layout {'|'.join(LAYOUTS)})"
        )
    if default is not None and layout is not None:
        what = (
            "volumes found by their format (Zarr, OME-Zarr, TIFF, HDF5; --marker FILE: the "
            "folders holding FILE instead)"
            if pipeline in VOLUME_PIPELINES
            else f"folders holding {default!r} (--marker names another file)"
        )
        raise InvalidInput(f"--layout is not for {pipeline}: its inputs are {what}")
    if is_manifest(source):
        if marker is not None or layout is not None:
            raise InvalidInput("--marker and --layout apply to a folder or prefix, not a manifest")
        return Inputs(read_manifest_rows(source, settings), "manifest")
    if "://" not in source and not Path(source).is_dir():
        raise InvalidInput(f"--inputs {source!r}: no such folder (or use a .csv/.txt manifest)")
    if default is None:
        return layout_series(source, layout, settings)
    if pipeline in VOLUME_PIPELINES and marker is None:
        return Inputs(volume_rows(source, settings), "marker")
    return Inputs(marker_folders(source, marker or default, settings), "marker")
