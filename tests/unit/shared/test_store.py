"""The object store contract, run against a local folder and against the S3 test server."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from shared.errors import InvalidInput, MissingInput, PermanentStoreError, UnsafePath
from shared.settings import Settings
from shared.store import LocalStore, ObjectStore, S3Store, open_store, safe_key


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "root"))
    bucket = request.getfixturevalue("bucket")
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_store(f"s3://{bucket}/root", Settings(s3_endpoint_url=endpoint))


def test_put_get_list_roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    info = store.put_bytes("a/b/one.bin", b"hello")
    assert info.bytes == 5 and info.sha256 == hashlib.sha256(b"hello").hexdigest()
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    store.put_file("a/two.bin", src)
    assert store.get_bytes("a/b/one.bin") == b"hello"
    assert store.get_file("a/two.bin", tmp_path / "back.bin").read_bytes() == b"x" * 1000
    assert store.size("a/two.bin") == 1000
    assert store.exists("a/b/one.bin") and not store.exists("a/b/nope")
    assert list(store.list("a")) == ["a/b/one.bin", "a/two.bin"]
    assert list(store.child("a").list()) == ["b/one.bin", "two.bin"]
    assert store.children() == ["a"] and store.children("a") == ["b"]
    assert store.children("nothing-here") == []
    assert store.child("a").get_bytes("b/one.bin") == b"hello"


def test_put_if_absent_commits_once(store: ObjectStore) -> None:
    assert store.put_if_absent("job/manifest.json", b"first") is True
    assert store.put_if_absent("job/manifest.json", b"second") is False
    assert store.get_bytes("job/manifest.json") == b"first"


def test_missing_object_is_missing_input(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(MissingInput, match="nope"):
        store.get_bytes("nope")
    with pytest.raises(MissingInput):
        store.get_file("nope", tmp_path / "x")
    with pytest.raises(MissingInput):
        store.size("nope")


def test_delete_prefix(store: ObjectStore) -> None:
    for name in ("p/1", "p/2", "p/q/3", "keep/4"):
        store.put_bytes(name, b".")
    assert store.delete_prefix("p") == 3
    assert list(store.list()) == ["keep/4"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\b", "", "a/./b"])
def test_keys_cannot_escape_the_root(store: ObjectStore, key: str) -> None:
    with pytest.raises(UnsafePath):
        store.put_bytes(key, b"no")
    with pytest.raises(UnsafePath):
        store.child(key) if key else safe_key(key)


def test_s3_store_pickles_without_client(bucket: str, s3_endpoint: str) -> None:
    store = open_store(f"s3://{bucket}/p", Settings(s3_endpoint_url=s3_endpoint))
    assert isinstance(store, S3Store)
    store.put_bytes("k", b"v")  # creates the client
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("k") == b"v"


def test_s3_missing_bucket_is_permanent(s3_endpoint: str) -> None:
    store = open_store("s3://no-such-bucket-here/p", Settings(s3_endpoint_url=s3_endpoint))
    with pytest.raises(PermanentStoreError, match="NoSuchBucket"):
        store.put_bytes("k", b"v")


def test_open_store_schemes(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    with pytest.raises(InvalidInput, match="scheme"):
        open_store("gs://bucket/x")
    with pytest.raises(InvalidInput, match="bucket"):
        open_store("s3:///x")


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    class Boom(Exception):
        pass

    def explode(fh: object) -> None:
        raise Boom

    with pytest.raises(Boom):
        store._atomic_write("half.bin", explode)
    assert not (tmp_path / "half.bin").exists()
    assert list(tmp_path.iterdir()) == []
