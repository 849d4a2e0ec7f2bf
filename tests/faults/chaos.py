"""Tools of the fault tests: watch jobs change stage as it happens, kill and replace consumer
processes, and read the results bucket the way a reader would while all that goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import redis

from consumers.ledger import JOB_PREFIX
from producer.local_consumer import start_consumer, stop_consumer, wait_until_ready
from shared.jobspec import JobSpec
from shared.settings import Settings

Record = dict[str, str]


@dataclass(frozen=True)
class OneJob:
    """A ``dti`` job on a queue of its own, results below ``s3://{bucket}/r``: what most
    fault tests inject their fault into."""

    queue: str
    settings: Settings
    spec: JobSpec

    @classmethod
    def make(
        cls, broker_url: str, bucket: str, subject_dir: Path, name: str, pipeline: str = "dti"
    ) -> OneJob:
        """``pipeline="tractography"``: a job of tens of seconds, for faults that must land
        while it runs (a dti job on this subject is over in a few seconds)."""
        queue = f"{name}-{uuid.uuid4().hex[:6]}"
        params = {"shards": 2, "qc": False} if pipeline == "tractography" else {}
        spec = JobSpec(
            pipeline=pipeline,
            input_uri=str(subject_dir),
            results_uri=f"s3://{bucket}/r",
            params=params,
        )
        return cls(queue, Settings(broker_url=broker_url, queue=queue), spec)  # type: ignore[arg-type]

    @property
    def prefix(self) -> str:
        """The job's folder in the bucket."""
        return f"r/{self.spec.result_prefix}"


class StageEvents:
    """Every change to a job record, as Redis makes it (keyspace notifications), with the
    record read right after: a test learns that a consumer entered a stage within milliseconds,
    without polling."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.client.config_set("notify-keyspace-events", "Kh")
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(f"__keyspace@0__:{JOB_PREFIX}*")

    def wait(
        self, predicate: Callable[[str, Record], bool], timeout_s: float
    ) -> tuple[str, Record] | None:
        """The first (job id, record) after now that satisfies ``predicate``, or None."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message is None:
                continue
            key = str(message["channel"]).split(":", 1)[1]
            job_id = key.removeprefix(JOB_PREFIX)
            record: Record = self.client.hgetall(key)  # type: ignore[assignment]
            if predicate(job_id, record):
                return job_id, record
        return None

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


def consumer_name(record: Record) -> str:
    """The fleet name of the consumer in a job record (``name@host`` -> ``name``)."""
    return record.get("consumer", "").split("@", 1)[0]


class Fleet:
    """Real consumer processes (``voxfleet worker``), each in its own process group so that a
    SIGKILL takes its Dask workers along, as losing a node would."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, *, wait: bool = True) -> str:
        self.started += 1
        name = f"c{self.started}-{uuid.uuid4().hex[:4]}"
        self.processes[name] = start_consumer(self.env, self.log(name), name)
        if wait:
            self.wait_ready(name)
        return name

    def wait_ready(self, name: str, timeout_s: float = 180) -> None:
        url = self.env["VOXFLEET_BROKER_URL"]
        wait_until_ready(self.processes[name], name, url, self.log(name), timeout_s)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            stop_consumer(self.processes.pop(name), grace_s=60)


@contextmanager
def fleet(env: dict[str, str], log_dir: Path) -> Iterator[Fleet]:
    consumers = Fleet(env, log_dir)
    try:
        yield consumers
    finally:
        consumers.stop_all()


@dataclass
class Observations:
    polls: int = 0
    manifests_seen: dict[str, set[str]] = field(default_factory=dict)  # job prefix -> ETags
    keys_ever: set[str] = field(default_factory=set)  # every object any look found
    partial: list[str] = field(default_factory=list)  # what a reader saw that it must not


class PublicationWatcher:
    """A reader polling the results bucket while the faults happen. It may never see a
    manifest that lists a missing or different-sized file, nor a file below the committed
    attempt that the manifest does not list; and a job's manifest, once seen, never changes
    (a second publication would)."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        self.s3 = boto3.client("s3", endpoint_url=endpoint)
        self.bucket = bucket
        self.seen = Observations()
        self._manifests: dict[str, dict[str, Any]] = {}  # ETag -> parsed manifest
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publication-watcher", daemon=True)

    def __enter__(self) -> PublicationWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def listing(self) -> dict[str, tuple[int, str]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {o["Key"]: (o["Size"], o["ETag"]) for p in pages for o in p.get("Contents", [])}

    def check(self) -> None:
        """One reader's look at the bucket."""
        objects = self.listing()
        self.seen.polls += 1
        self.seen.keys_ever.update(objects)
        for key, (_, etag) in objects.items():
            if not key.endswith("/manifest.json"):
                continue
            job = key.removesuffix("/manifest.json")
            self.seen.manifests_seen.setdefault(job, set()).add(etag)
            manifest = self._manifests.get(etag)
            if manifest is None:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                manifest = self._manifests[etag] = json.loads(body)
            listed = {f"{job}/{f['key']}": f["bytes"] for f in manifest["files"]}
            for path, size in listed.items():
                if objects.get(path, (None,))[0] != size:
                    self.seen.partial.append(f"{key} lists {path} ({size} B): not there")
            committed = f"{job}/{manifest['attempt']}/"
            for other in objects:
                if other.startswith(committed) and other not in listed:
                    self.seen.partial.append(f"{other} is in the committed attempt, unlisted")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(0.05)  # a reader's pace; the check itself takes longer under load


def attempts_seen(keys: set[str], job_prefix: str) -> set[str]:
    """The attempt folders that ever appeared below one job's prefix."""
    start = job_prefix.rstrip("/") + "/"
    return {
        k[len(start) :].split("/", 1)[0]
        for k in keys
        if k.startswith(start) and k.count("/") > start.count("/")
    }


def wait_quiet(redis_url: str, queue: str, timeout_s: float) -> None:
    """Until no message is queued or held unacked: every delivery, deferral and retry played
    out. (Polls: these are kombu's own keys, which nothing notifies about.)"""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while client.llen(queue) or client.hlen("unacked"):
            assert time.monotonic() < deadline, "messages still queued or unacked"
            time.sleep(0.2)
    finally:
        client.close()
