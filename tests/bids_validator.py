"""The BIDS community's own validator (``bids-validator-deno``, from the dev extra), run offline
on a folder: what every test of a BIDS-Derivatives output asks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def bids_validator() -> str | None:
    here = Path(sys.executable).parent / "bids-validator-deno"
    return str(here) if here.exists() else shutil.which("bids-validator-deno")


def validate(root: Path) -> list[dict[str, Any]]:
    """Every issue the validator reports on the dataset at ``root``."""
    binary = bids_validator()
    if binary is None:
        pytest.skip("bids-validator-deno is not installed (the dev extra has it)")
    run = subprocess.run(
        [binary, str(root), "--format", "json"], capture_output=True, text=True, timeout=120
    )
    assert run.stdout, run.stderr
    issues: list[dict[str, Any]] = json.loads(run.stdout)["issues"]["issues"]
    return issues


def errors(issues: list[dict[str, Any]]) -> list[str]:
    return [f"{i['code']} {i.get('location')}" for i in issues if i.get("severity") == "error"]
