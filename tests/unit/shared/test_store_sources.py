"""``VOXFLEET_S3_SOURCES`` against real S3 APIs over HTTP (moto's servers): public inputs read
with unsigned requests, results written with the lab's own profile, endpoint and region, in one
process.

What moto (5.2) checks, read in ``moto/s3/responses.py`` and seen here. On the suite's server
(no IAM): a request without an ``Authorization`` header that GETs an existing object is refused
(403) unless the bucket policy allows ``s3:GetObject`` (or the object's ACL is public-read), so
for object reads the policy is the only way in. A HEAD is checked as an action named
``s3:HeadObject``, which AWS does not have (there ``s3:GetObject`` covers HEAD), so the policy
below grants it too. That server does *not* refuse an unsigned listing, nor an unsigned PUT of a
new key, and checks no signature. The lab's endpoint is a second moto process that enforces IAM
(``tests/faults/netcut.py``): there the signature of the profile's key is verified and the
user's policy evaluated (a wrong secret is refused); but it cannot serve an unsigned request
even under a public bucket policy (HTTP 500: it looks for the Authorization header that is not
there), so the public bucket stays on the first server; and it accepts a signing region other
than the bucket's, so which region signed is read from the requests themselves.
"""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from typer.testing import CliRunner

import shared.settings
from producer.cli import app as cli
from shared.errors import ConfigError, PermanentStoreError
from shared.settings import S3Source, Settings, read_settings
from shared.store import S3Store, open_store
from tests.buckets import Lab, lab_endpoint, public_bucket
from tests.buckets import admin as _admin

DWI = bytes(range(256)) * 4096  # 1 MiB: a ranged read of 16 bytes is visibly not all of it
DWI_KEY = "ds000114/sub-01/dwi/sub-01_dwi.nii.gz"
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_endpoint(tmp_path_factory.mktemp("lab-s3") / "moto.log") as found:
        yield found


@pytest.fixture
def inputs(s3_endpoint: str) -> str:
    """A bucket laid out like OpenNeuro's, readable by anyone through its bucket policy only."""
    name = public_bucket(s3_endpoint, f"inputs-{uuid.uuid4().hex[:10]}")
    _admin(s3_endpoint).put_object(Bucket=name, Key=DWI_KEY, Body=DWI)
    _admin(s3_endpoint).put_object(Bucket=name, Key="ds000114/dataset_description.json", Body=b"{}")
    return name


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert botocore.session.Session().get_credentials() is None  # nothing to sign with


@pytest.fixture
def lab_profile(lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The ``lab`` profile with the lab user's key, and ``stale`` with a wrong secret."""
    credentials = lab.credentials_file(tmp_path / "credentials")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))


@dataclass
class Traffic:
    """What a store's client sent, and the status and length of every GetObject answer."""

    requests: list[Any] = field(default_factory=list)
    got: list[tuple[int, int]] = field(default_factory=list)

    def header(self, request: Any, name: str) -> str:
        value = request.headers.get(name, "")
        return value.decode() if isinstance(value, bytes) else str(value)

    def unsigned(self) -> bool:
        return bool(self.requests) and all(
            "Authorization" not in r.headers and "X-Amz-Signature" not in r.url
            for r in self.requests
        )

    def signers(self) -> set[str]:
        """``key id/region`` of every request's SigV4 credential scope."""
        scopes = set()
        for request in self.requests:
            scope = self.header(request, "Authorization").split("Credential=")[1].split(",")[0]
            key_id, _date, region, *_ = scope.split("/")
            scopes.add(f"{key_id}/{region}")
        return scopes


def watched(store: S3Store, traffic: Traffic | None = None) -> Traffic:
    traffic = traffic or Traffic()
    events = store.client.meta.events
    events.register("before-send.s3", lambda request, **_: traffic.requests.append(request))
    events.register(
        "after-call.s3.GetObject",
        lambda http_response, parsed, **_: traffic.got.append(
            (http_response.status_code, parsed["ContentLength"])
        ),
    )
    return traffic


def _s3(store: Any) -> S3Store:
    assert isinstance(store, S3Store)
    return store


# --- (a) which source a URI gets ---------------------------------------------------------------
SOURCES = {
    "s3://openneuro.org/": {"anonymous": True, "region": "us-east-1"},
    "s3://fcp-indi/": {"anonymous": True},
    "s3://fcp-indi/data/Projects/HBN/": {"anonymous": True, "endpoint_url": "https://hbn.mirror"},
    "s3://open": {"profile": "other"},
    "s3://lab-results/": {
        "endpoint_url": "https://minio.lab:9000", "region": "eu-west-1", "profile": "lab"
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://openneuro.org/ds000114", S3Source(anonymous=True, region="us-east-1")),
        ("s3://openneuro.org", S3Source(anonymous=True, region="us-east-1")),
        ("s3://open/x", S3Source(profile="other", region="ap-south-1")),  # region inherited
        ("s3://fcp-indi/data/Projects/HBN/BIDS_curated/derivatives/qsiprep",
         S3Source(anonymous=True, endpoint_url="https://hbn.mirror", region="ap-south-1")),
        ("s3://fcp-indi/data/Projects/HBNX/sub-1",  # a whole component, not a string prefix
         S3Source(anonymous=True, region="ap-south-1")),
        ("s3://fcp-indi/", S3Source(anonymous=True, region="ap-south-1")),
        ("s3://lab-results/derivatives",
         S3Source(endpoint_url="https://minio.lab:9000", region="eu-west-1", profile="lab")),
        ("s3://lab-bucket/hcp",  # no match: the global settings, as before sources existed
         S3Source(endpoint_url="https://minio.internal:9000", region="ap-south-1")),
        ("s3://lab", S3Source(endpoint_url="https://minio.internal:9000", region="ap-south-1")),
    ],
)  # fmt: skip
def test_longest_whole_component_prefix_wins(
    uri: str, expected: S3Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXFLEET_S3_SOURCES", json.dumps(SOURCES))
    monkeypatch.setenv("VOXFLEET_S3_ENDPOINT_URL", "https://minio.internal:9000")
    monkeypatch.setenv("VOXFLEET_S3_REGION", "ap-south-1")
    settings = read_settings()
    assert settings.s3_source(uri) == expected
    store = _s3(open_store(uri, settings))
    assert (store.anonymous, store.endpoint_url, store.region, store.profile) == (
        expected.anonymous, expected.endpoint_url, expected.region, expected.profile
    )  # fmt: skip


def test_a_child_and_a_pickled_copy_keep_their_roots_source() -> None:
    settings = Settings(s3_sources=SOURCES)
    root = _s3(open_store("s3://fcp-indi", settings))
    # The root chose the bucket-wide source; its children share its client, so they keep it.
    child = root.child("data/Projects/HBN/BIDS_curated")
    copy = pickle.loads(pickle.dumps(child))
    for store in (child, copy):
        assert store.anonymous and store.endpoint_url is None and store.uri.startswith(root.uri)
    assert copy._client is None  # a Dask worker builds its own, from the same source


# --- (b) an anonymous source reads a public bucket, unsigned -----------------------------------
def test_anonymous_source_reads_a_public_bucket_with_unsigned_requests(
    inputs: str, s3_endpoint: str, no_aws_credentials: None, tmp_path: Path
) -> None:
    settings = Settings(
        s3_sources={f"s3://{inputs}/": S3Source(anonymous=True, endpoint_url=s3_endpoint)}
    )
    store = _s3(open_store(f"s3://{inputs}/ds000114", settings))
    traffic = watched(store)

    assert list(store.list()) == ["dataset_description.json", "sub-01/dwi/sub-01_dwi.nii.gz"]
    assert store.children() == ["sub-01"]
    assert store.head_bytes("sub-01/dwi/sub-01_dwi.nii.gz", 16) == DWI[:16]
    # A ranged GET: the server sent 16 bytes of the 1 MiB object, not the object.
    assert traffic.header(traffic.requests[-1], "Range") == "bytes=0-15"
    assert traffic.got[-1] == (206, 16)
    assert store.size("sub-01/dwi/sub-01_dwi.nii.gz") == len(DWI)
    got = store.get_file("sub-01/dwi/sub-01_dwi.nii.gz", tmp_path / "dwi.nii.gz")
    assert got.read_bytes() == DWI
    assert traffic.unsigned()  # every request: no Authorization header, no presigned query

    # The policy is what let those GETs in: the same unsigned reads of a bucket without one are
    # refused (moto enforces this for object reads, not for listings; see the module's text).
    private = f"private-{uuid.uuid4().hex[:10]}"
    _admin(s3_endpoint).create_bucket(Bucket=private)
    _admin(s3_endpoint).put_object(Bucket=private, Key=DWI_KEY, Body=DWI)
    closed = Settings(
        s3_sources={f"s3://{private}": S3Source(anonymous=True, endpoint_url=s3_endpoint)}
    )
    with pytest.raises(PermanentStoreError, match="S3 refused"):
        open_store(f"s3://{private}", closed).head_bytes(DWI_KEY, 16)


# --- (c) results through the lab's credentials, endpoint and region, in the same process -------
def _sources(inputs: str, s3_endpoint: str, lab: Lab, profile: str = "lab") -> Settings:
    return Settings(
        s3_endpoint_url=s3_endpoint,  # the global settings, for URIs no source names
        s3_sources={
            f"s3://{inputs}/": S3Source(anonymous=True, endpoint_url=s3_endpoint),
            f"s3://{lab.bucket}/": S3Source(
                endpoint_url=lab.endpoint, region="eu-west-1", profile=profile
            ),
        },
    )


def test_results_are_written_with_the_labs_profile_endpoint_and_region(
    inputs: str, bucket: str, s3_endpoint: str, lab: Lab, lab_profile: None, tmp_path: Path
) -> None:
    settings = _sources(inputs, s3_endpoint, lab)
    prefix = f"derivatives-{uuid.uuid4().hex[:8]}"
    source = _s3(open_store(f"s3://{inputs}/ds000114", settings))
    out = _s3(open_store(f"s3://{lab.bucket}/{prefix}", settings))
    other = _s3(open_store(f"s3://{bucket}/scratch", settings))
    read, wrote, elsewhere = watched(source), watched(out), watched(other)

    dwi = source.get_file("sub-01/dwi/sub-01_dwi.nii.gz", tmp_path / "dwi.nii.gz")
    job = out.child("sub-01/dti/key")
    job.put_file("attempt/fa.nii.gz", dwi)
    job.put_bytes("attempt/timing.json", b"{}")
    assert job.put_if_absent("manifest.json", b'{"files": []}') is True
    worker_copy = _s3(pickle.loads(pickle.dumps(job)))  # as a Dask worker receives it
    watched(worker_copy, wrote)  # its own client, rebuilt from the same source
    worker_copy.put_bytes("attempt/shards/sl-0000.trk", b"trk")
    other.put_bytes("note.txt", b"global")

    # Checked by the lab's server: it verified each signature with the lab user's secret.
    check = _admin(lab.endpoint, "eu-west-1", lab.key_id, lab.secret)
    listed = check.list_objects_v2(Bucket=lab.bucket, Prefix=f"{prefix}/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"{prefix}/sub-01/dti/key/{k}"
        for k in ("attempt/fa.nii.gz", "attempt/shards/sl-0000.trk", "attempt/timing.json",
                  "manifest.json")
    ]  # fmt: skip
    assert (
        check.get_object(Bucket=lab.bucket, Key=f"{prefix}/sub-01/dti/key/attempt/fa.nii.gz")[
            "Body"
        ].read()
        == DWI
    )
    # Seen in the requests: who signed, in which region, and where each one went.
    assert read.unsigned() and all(r.url.startswith(s3_endpoint + "/") for r in read.requests)
    assert wrote.signers() == {f"{lab.key_id}/eu-west-1"}  # the profile, not the env's keys
    assert all(r.url.startswith(lab.endpoint + "/") for r in wrote.requests)
    assert elsewhere.signers() == {"voxfleet-test-key/us-east-1"}  # conftest's default chain
    assert all(r.url.startswith(s3_endpoint + "/") for r in elsewhere.requests)


def test_the_labs_server_refuses_a_profile_with_the_wrong_secret(
    inputs: str, s3_endpoint: str, lab: Lab, lab_profile: None
) -> None:
    settings = _sources(inputs, s3_endpoint, lab, profile="stale")
    with pytest.raises(PermanentStoreError, match="SignatureDoesNotMatch"):
        open_store(f"s3://{lab.bucket}/stale", settings).put_bytes("x", b"x")


def test_a_missing_profile_is_one_permanent_line(bucket: str, s3_endpoint: str) -> None:
    settings = Settings(
        s3_sources={f"s3://{bucket}": S3Source(endpoint_url=s3_endpoint, profile="nobody")}
    )
    with pytest.raises(PermanentStoreError, match="no AWS profile 'nobody'") as caught:
        open_store(f"s3://{bucket}", settings).get_bytes("x")
    assert "\n" not in str(caught.value)


# --- (d) an anonymous source is read-only -----------------------------------------------------
def test_writes_through_an_anonymous_source_are_refused_before_any_request(
    inputs: str, s3_endpoint: str, tmp_path: Path
) -> None:
    settings = Settings(
        s3_sources={f"s3://{inputs}": S3Source(anonymous=True, endpoint_url=s3_endpoint)}
    )
    store = _s3(open_store(f"s3://{inputs}/derivatives", settings))
    child = _s3(store.child("sub-01"))
    copy = _s3(pickle.loads(pickle.dumps(child)))
    traffic = [watched(s) for s in (store, child, copy)]
    (tmp_path / "f").write_bytes(b"x")
    writes: list[Callable[[], object]] = [
        lambda: store.put_bytes("a", b"x"),
        lambda: store.put_file("a", tmp_path / "f"),
        lambda: child.put_if_absent("manifest.json", b"{}"),
        lambda: copy.put_bytes("b", b"x"),
        lambda: store.delete_prefix("sub-01"),
    ]
    for write in writes:
        with pytest.raises(PermanentStoreError, match="read-only") as caught:
            write()
        assert "\n" not in str(caught.value) and "VOXFLEET_S3_SOURCES" in str(caught.value)
    # Refused by voxfleet, not S3 (moto would have taken an unsigned PUT of a new key).
    assert all(not t.requests for t in traffic)
    listed = _admin(s3_endpoint).list_objects_v2(Bucket=inputs, Prefix="derivatives/")
    assert "Contents" not in listed


def test_the_cli_reports_a_write_to_a_public_source_in_one_line(
    inputs: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        s3_sources={f"s3://{inputs}/": S3Source(anonymous=True, endpoint_url=s3_endpoint)}
    )
    monkeypatch.setattr(shared.settings, "_active", settings)
    out = CliRunner().invoke(cli, ["synth", "hcp", f"s3://{inputs}/synthetic"])
    line = out.stderr.strip()
    assert out.exit_code == 2, out.output
    assert "\n" not in line and "read-only" in line and f"s3://{inputs}/synthetic" in line


@pytest.mark.parametrize(
    "command",
    [
        ["enqueue", "dti", "{dwi}", "--results", "s3://{inputs}/derivatives"],
        ["campaign", "submit", "c", "dti", "--inputs", "{root}", "--results",
         "s3://{inputs}/derivatives/voxfleet", "--dry-run"],
    ],
    ids=["enqueue", "campaign"],
)  # fmt: skip
def test_results_under_a_public_source_are_refused_before_anything_is_enqueued(
    inputs: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    settings = Settings(
        broker_url="redis://127.0.0.1:1/0",  # type: ignore[arg-type]  # never reached
        s3_sources={f"s3://{inputs}/": S3Source(anonymous=True, endpoint_url=s3_endpoint)},
    )
    monkeypatch.setattr(shared.settings, "_active", settings)
    values = {
        "dwi": f"s3://{inputs}/{DWI_KEY}",
        "root": f"s3://{inputs}/ds000114",
        "inputs": inputs,
    }
    out = CliRunner().invoke(cli, [part.format(**values) for part in command])
    line = out.stderr.strip()
    assert out.exit_code == 2, out.output
    assert "\n" not in line and "anonymous (read-only) source" in line, line


# --- (e) bad VOXFLEET_S3_SOURCES values ---------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"s3://a/": ', "not JSON"),
        ('["s3://openneuro.org/"]', "valid dictionary"),
        ('{"openneuro.org/": {"anonymous": true}}', "must start with s3://"),
        ('{"s3:///ds000114": {}}', "does not name a bucket"),
        ('{"s3://fcp-indi//data": {}}', "empty, '.' or '..' path component"),
        ('{"s3://fcp-indi/": {}, "s3://fcp-indi": {}}', "given twice"),
        ('{"s3://fcp-indi/": {"anonymus": true}}', "['s3://fcp-indi/']['anonymus']: Extra inputs"),
        ('{"s3://fcp-indi/": {"anonymous": "perhaps"}}', "valid boolean"),
        ('{"s3://fcp-indi/": {"anonymous": true, "profile": "lab"}}', "takes no profile"),
        ('{"s3://lab/": {"endpoint_url": "minio.lab:9000"}}', "http:// or https://"),
    ],
)
def test_bad_sources_are_one_line_naming_the_variable(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXFLEET_S3_SOURCES", value)
    with pytest.raises(ConfigError) as caught:
        read_settings()
    text = str(caught.value)
    assert text.startswith("VOXFLEET_S3_SOURCES") and message in text and "\n" not in text


def test_the_cli_reports_bad_sources_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shared.settings, "_active", None)
    monkeypatch.setenv(
        "VOXFLEET_S3_SOURCES", '{"s3://fcp-indi/": {"anonymous": true, "profile": "x"}}'
    )
    out = CliRunner().invoke(cli, ["synth", "hcp", str(tmp_path / "out")])
    line = out.stderr.strip()
    assert out.exit_code == 2, out.output
    assert "\n" not in line and "VOXFLEET_S3_SOURCES['s3://fcp-indi/']: an anonymous" in line
