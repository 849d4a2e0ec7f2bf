"""Where a campaign's inputs come from: a CSV/TXT manifest, or the folders below a prefix.

Each input becomes a row (line number, input URI, subject, per-row parameters). Nothing is
enqueued until every row has been turned into a valid JobSpec; a bad row is reported by its
line number.
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput
from shared.settings import Settings
from shared.store import open_store, split_uri

MANIFEST_SUFFIXES = (".csv", ".txt", ".tsv")
INPUT_COLUMNS = ("input", "input_uri")
MAX_ROWS = 1_000_000  # a manifest bigger than this is a mistake, not a campaign
HEAD_THREADS = 32  # S3 HEAD latency dominates discovery; this many in flight hide it


@dataclass(frozen=True)
class InputRow:
    line: int  # 1-based line in the manifest; 0 for discovered folders
    input_uri: str
    subject: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # a row that cannot even be read; reported with the others, by line


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


def discover(prefix: str, marker: str, settings: Settings) -> list[InputRow]:
    """One row per folder below ``prefix`` that holds ``marker`` (e.g. the HCP DWI)."""
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


def input_rows(source: str, marker: str, settings: Settings) -> list[InputRow]:
    if is_manifest(source):
        return read_manifest_rows(source, settings)
    if "://" not in source and not Path(source).is_dir():
        raise InvalidInput(f"--inputs {source!r}: no such folder (or use a .csv/.txt manifest)")
    return discover(source, marker, settings)
