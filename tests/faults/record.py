"""Evidence for ``docs/reliability.md``: every fault, bad-input and security test appends one
JSON line describing what it injected and what it observed; ``python -m tests.faults.report``
renders the document from those lines, so the document is the suite's own output.

The log lives at ``$VOXFLEET_RELIABILITY_LOG`` (default ``build/reliability.jsonl`` under the
repository); ``make reliability`` truncates it, runs the suite and renders the document. Any
other pytest session points the variable at a fresh temporary file (``tests/conftest.py``), so
``make test`` or a single test run never mixes into the evidence.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("fault", "bad_input", "security")


def log_path() -> Path:
    return Path(os.environ.get("VOXFLEET_RELIABILITY_LOG", ROOT / "build" / "reliability.jsonl"))


def record(section: str, name: str, **facts: Any) -> None:
    """Append one observation. ``section`` is one of SECTIONS; ``name`` says what was tried
    (one line); ``facts`` are what was measured, e.g. ``injected=10, lost=0, duplicates=0,
    partial_visible=0`` for a fault, ``answer="...", state="failed", attempts=1,
    rejected_by="cli"`` for a bad input. Values must be JSON-serialisable."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; one of {SECTIONS}")
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"section": section, "name": name, "at": time.time(), **facts})
    # One write per line in append mode: lines from parallel processes do not interleave.
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def read() -> list[dict[str, Any]]:
    path = log_path()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
