"""Fixtures of the fault suite: a Redis of the test's own (its faults stay in it) and the
session's synthetic subject and S3 test server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.server import EmbeddedRedis
from tests.integration.conftest import subject_dir  # noqa: F401 - the session's subject


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server
