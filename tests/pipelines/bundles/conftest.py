"""Inputs of the bundles and profiles tests: dipy's own bundles, subject 2's three merged as a
committed tractography result ("whole brain", so the truth is known) and subject 1's as the
atlas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producer.synth.bundles import (
    merged,
    read_minimal_bundles,
    write_atlas,
    write_tractography_result,
)
from shared.store import LocalStore


@pytest.fixture(scope="module")
def data() -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    return read_minimal_bundles()


@pytest.fixture
def stores(tmp_path: Path, data: Any) -> tuple[str, str, str]:
    """(results URI, tractography result URI, atlas URI) on disk."""
    subjects, header = data
    results = LocalStore(tmp_path / "results")
    prefix = write_tractography_result(results, "sub_2", merged(subjects[2]), header, shards=3)
    write_atlas(LocalStore(tmp_path / "atlas"), subjects[1], header)
    return str(tmp_path / "results"), f"{results.uri}/{prefix}", str(tmp_path / "atlas")
