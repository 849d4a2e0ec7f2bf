"""What a manifest's provenance says: the software, and the input objects with their ETags."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import pytest

from shared import provenance
from shared.settings import Settings
from shared.store import ObjectStore
from tests.unit.shared.test_store import store

__all__ = ["store"]


def test_software_names_the_libraries_that_compute_the_numbers() -> None:
    made = provenance.software(Settings(image_digest="sha256:ab12"))
    assert made["image_digest"] == "sha256:ab12"
    assert made["python"] == platform.python_version()
    assert made["voxfleet"] and made["packages"]["dipy"] and made["packages"]["numpy"]
    assert {"itk-core", "zarr", "nibabel", "numba", "trx-python"} <= set(made["packages"])


def test_the_commit_comes_from_the_settings_or_the_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOXFLEET_GIT_COMMIT", "0123abc")
    assert provenance.git_commit(Settings()) == "0123abc"  # as the image sets it
    monkeypatch.delenv("VOXFLEET_GIT_COMMIT")
    found = provenance.git_commit(Settings())
    if (Path(provenance.__file__).resolve().parents[1] / ".git").exists():
        assert found is not None and len(found.removesuffix("-dirty")) == 40
    else:
        assert found is None


def test_stat_and_listing_change_when_an_object_does(store: ObjectStore) -> None:
    for i in range(3):
        store.put_bytes(f"vol.zarr/c/{i}", b"x" * (10 + i))
    stat = store.stat("vol.zarr/c/1")
    assert stat.bytes == 11 and stat.etag
    first = provenance.listing(store.child("vol.zarr"))
    assert first["count"] == 3 and first["bytes"] == 33
    assert [o["key"] for o in first["objects"]] == ["c/0", "c/1", "c/2"]
    assert provenance.listing(store.child("vol.zarr")) == first  # a listing, no reads
    time.sleep(0.01)  # a local ETag is the modification time: let it move
    store.put_bytes("vol.zarr/c/1", b"y" * 11)  # same size, new content
    assert provenance.listing(store.child("vol.zarr"))["sha256"] != first["sha256"]


def test_a_single_file_input_is_one_object(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "scan.h5").write_bytes(b"h5" * 50)
    found = provenance.stored(str(tmp_path / "scans" / "scan.h5"), Settings())
    assert [o["key"] for o in found["objects"]] == ["scan.h5"]
    assert found["objects"][0]["bytes"] == 100
    many = provenance.stored(str(tmp_path / "scans"), Settings())
    assert many["count"] == 1 and os.path.basename(many["uri"]) == "scans"
