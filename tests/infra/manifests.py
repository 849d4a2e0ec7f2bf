"""Reading infra/: YAML documents, the env vars they set, and where the KEDA CRDs live."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
# Beside the repository, never copied into it (shared/schemas/keda/README.md).
KEDA_CRDS = REPO.parent / "shared" / "schemas" / "keda"

# Kubernetes manifests in the folders `kubectl apply -f` is pointed at, plus the examples.
K8S_FILES = sorted([*K8S.glob("*.yaml"), *K8S.glob("keda/*.yaml"), *K8S.glob("examples/*.yaml")])
KEDA_GROUP = "keda.sh/"

# On SIGTERM the job in hand gets VOXFLEET_SOFT_SHUTDOWN_S to finish, then is requeued
# (consumers/shutdown.py). Deployments set it to outlast a whole job - the longest measured is
# the HCP-size tractography job, 1,955.9 s wall (docs/benchmarks.md) - and every grace period
# must outlast it plus the cluster's teardown and the commit.
LONGEST_MEASURED_JOB_S = 1956
TEARDOWN_MARGIN_S = 60
MIN_GRACE_S = LONGEST_MEASURED_JOB_S + TEARDOWN_MARGIN_S


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in K8S_FILES:
        for doc in load_all(path):
            yield path, doc


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} definitions"
    return hits[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template in the manifests, named by its owner."""
    for _, doc in k8s_documents():
        owner = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            yield owner, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "ScaledJob":
            yield owner, doc["spec"]["jobTargetRef"]["template"]["spec"]


def consumer_pods() -> list[tuple[str, dict[str, Any]]]:
    return [
        (owner, spec)
        for owner, spec in pod_specs()
        if any(c["name"] == "consumer" for c in spec["containers"])
    ]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


# --- environment variables set by each kind of manifest -------------------------------------
def k8s_env() -> dict[str, dict[str, str | None]]:
    """Consumer env per pod owner: plain values, ConfigMap data, and secret refs (None)."""
    out: dict[str, dict[str, str | None]] = {}
    for owner, spec in consumer_pods():
        env: dict[str, str | None] = {}
        main = container(spec, "consumer")
        for ref in main.get("envFrom", []):
            cm = find("ConfigMap", ref["configMapRef"]["name"])
            env.update(cm["data"])
        for var in main.get("env", []):
            env[var["name"]] = var.get("value")
        out[owner] = env
    return out


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((INFRA / "compose.yaml").read_text())
    return doc


def compose_env() -> dict[str, dict[str, str]]:
    """Environment per compose service that runs the voxfleet image."""
    out = {}
    for name, service in compose()["services"].items():
        if str(service.get("image", "")).startswith("voxfleet:"):
            out[name] = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return out


_SYSTEMD_ENV = re.compile(r"^Environment=(\w+)=(.*)$")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")


def systemd_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (INFRA / "systemd" / "voxfleet-worker@.service").read_text().splitlines():
        if match := _SYSTEMD_ENV.match(line.strip()):
            env[match[1]] = match[2]
    for line in (INFRA / "systemd" / "voxfleet.env.example").read_text().splitlines():
        if match := _ENV_LINE.match(line.strip()):
            env[match[1]] = match[2]
    return env


def sbatch_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (INFRA / "slurm" / "voxfleet-consumers.sbatch").read_text().splitlines():
        if (match := _ENV_LINE.match(line.strip())) and line.strip().startswith("export"):
            env[match[1]] = match[2].strip('"')
    return env


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage (the only one the image keeps)."""
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env
