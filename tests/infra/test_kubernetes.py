"""infra/k8s/: built-in kinds with kubernetes-validate (strict: unknown fields are errors), KEDA
kinds against the KEDA CRDs' openAPIV3Schema from ../shared/schemas/keda/, and the timing and
reference rules that no schema knows."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.settings import Settings
from tests.infra.manifests import (
    INFRA,
    K8S_FILES,
    KEDA_CRDS,
    KEDA_GROUP,
    LONGEST_MEASURED_JOB_S,
    MIN_GRACE_S,
    TEARDOWN_MARGIN_S,
    consumer_pods,
    container,
    find,
    k8s_documents,
    k8s_env,
    pod_specs,
)

K8S_VERSION = "1.31"  # the oldest minor we document support for (docs/operations.md)

BUILT_IN = [
    pytest.param(doc, id=f"{path.relative_to(INFRA)}:{doc['kind']}/{doc['metadata']['name']}")
    for path, doc in k8s_documents()
    if not doc["apiVersion"].startswith(KEDA_GROUP)
]
KEDA = [
    pytest.param(doc, id=f"{path.relative_to(INFRA)}:{doc['kind']}/{doc['metadata']['name']}")
    for path, doc in k8s_documents()
    if doc["apiVersion"].startswith(KEDA_GROUP)
]


def test_manifests_were_found() -> None:
    assert len(K8S_FILES) >= 7 and len(BUILT_IN) >= 9 and len(KEDA) == 2


@pytest.mark.parametrize("doc", BUILT_IN)
def test_built_in_kinds_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(find("Deployment", "voxfleet-consumer"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 3600  # not the real name
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# --- KEDA ------------------------------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: an object
    with declared properties accepts no others (unless it preserves unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _keda_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    if not KEDA_CRDS.is_dir():
        pytest.skip(
            f"KEDA CRD schemas not found at {KEDA_CRDS} (they live beside the repository in "
            "shared/schemas/keda/ and are not copied into it); KEDA manifests not validated"
        )
    validators = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft7Validator.check_schema(schema)
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def _keda_errors(doc: dict[str, Any]) -> list[str]:
    validator = _keda_validators().get((doc["apiVersion"], doc["kind"]))
    assert validator is not None, f"no KEDA CRD for {doc['apiVersion']} {doc['kind']}"
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("doc", KEDA)
def test_keda_kinds_validate_against_the_crds(doc: dict[str, Any]) -> None:
    assert _keda_errors(doc) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "scalingStrategy", "strategy"), "precise"),  # not in the enum
        (("spec", "pollingIntervall"), 10),  # misspelt field
        (("spec", "jobTargetRef", "backoffLimit"), "zero"),  # wrong type
    ],
)
def test_the_crd_check_rejects_broken_variants(path: tuple[str, ...], value: object) -> None:
    doc = copy.deepcopy(find("ScaledJob", "voxfleet-consumer"))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _keda_errors(doc)


def test_scaled_job_runs_one_message_per_pod_and_counts_running_jobs() -> None:
    job = find("ScaledJob", "voxfleet-consumer")
    spec = job["spec"]
    pod = spec["jobTargetRef"]["template"]["spec"]
    args = container(pod, "consumer")["args"]
    assert args[:3] == ["worker", "--max-jobs", "1"] and "--idle-exit" in args
    assert pod["restartPolicy"] == "Never"
    assert spec["scalingStrategy"]["strategy"] == "accurate"
    assert spec["scalingStrategy"]["pendingPodConditions"] == ["Ready"]
    assert "readinessProbe" in container(pod, "consumer")  # what "pending" is measured by
    assert spec["rollout"]["strategy"] == "gradual"  # an edit does not kill running jobs
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listLength"] == "1"
    # The list KEDA watches is the queue the consumers read.
    settings = find("ConfigMap", "voxfleet-settings")["data"]
    assert trigger["metadata"]["listName"] == settings["VOXFLEET_QUEUE"]
    assert trigger["metadata"]["address"].startswith(
        f"{find('Service', 'redis')['metadata']['name']}."
    )
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (secret_ref,) = auth["spec"]["secretTargetRef"]
    assert secret_ref["parameter"] == "password"
    secret = find("Secret", secret_ref["name"])
    assert secret_ref["key"] in secret["stringData"]


# --- timing: grace > a whole job, deadlines > job limit, visibility > job limit --------------
def _settings_for(owner: str) -> Settings:
    env = {k: v for k, v in k8s_env()[owner].items() if v is not None and "$(" not in v}
    return Settings(**{k.removeprefix("VOXFLEET_").lower(): v for k, v in env.items()
                       if k.startswith("VOXFLEET_")})  # fmt: skip


@pytest.mark.parametrize("owner", [owner for owner, _ in consumer_pods()])
def test_termination_grace_lets_the_job_in_hand_finish(owner: str) -> None:
    spec = dict(consumer_pods())[owner]
    settings = _settings_for(owner)
    assert spec["terminationGracePeriodSeconds"] >= MIN_GRACE_S
    # The job's own deadline comes first, leaving the margin to requeue and tear down.
    assert settings.soft_shutdown_s >= LONGEST_MEASURED_JOB_S
    assert settings.soft_shutdown_s + TEARDOWN_MARGIN_S <= spec["terminationGracePeriodSeconds"]
    # Redis redelivers an unacked message older than this: it must outlast the longest job.
    assert settings.visibility_timeout_s > settings.job_time_limit_s


@pytest.mark.parametrize("owner", [owner for owner, _ in consumer_pods()])
def test_local_clusters_fit_the_pod(owner: str) -> None:
    # os.cpu_count() inside a pod is the node's: the worker count must be set to the request.
    resources = container(dict(consumer_pods())[owner], "consumer")["resources"]
    settings = _settings_for(owner)
    assert settings.default_cluster == "local"
    assert settings.local_workers == int(resources["requests"]["cpu"])
    per_worker_gib = float(settings.local_memory_limit.removesuffix("GiB"))
    assert per_worker_gib * settings.local_workers < float(
        resources["limits"]["memory"].removesuffix("Gi")
    )  # the consumer process itself holds the inputs too


def test_a_scaled_job_may_outlive_the_job_time_limit() -> None:
    spec = find("ScaledJob", "voxfleet-consumer")["spec"]["jobTargetRef"]
    assert (
        spec["activeDeadlineSeconds"]
        > _settings_for("ScaledJob/voxfleet-consumer").job_time_limit_s
    )


def test_deployment_and_scaled_job_run_the_same_consumer() -> None:
    pods = dict(consumer_pods())
    deployment = copy.deepcopy(pods["Deployment/voxfleet-consumer"])
    job = copy.deepcopy(pods["ScaledJob/voxfleet-consumer"])
    for spec in (deployment, job):
        spec.pop("restartPolicy", None)
        container(spec, "consumer").pop("args")
    assert deployment == job


# --- references ------------------------------------------------------------------------------
def test_every_secret_and_config_map_reference_resolves() -> None:
    for owner, spec in pod_specs():
        for c in spec["containers"]:
            for var in c.get("env", []):
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = find("Secret", ref["name"])
                    assert ref["key"] in secret["stringData"], f"{owner}: {ref}"
            for source in c.get("envFrom", []):
                find("ConfigMap", source["configMapRef"]["name"])
            for mount in c.get("volumeMounts", []):
                assert any(v["name"] == mount["name"] for v in spec.get("volumes", [])) or (
                    owner.startswith("StatefulSet")
                ), f"{owner}: volume {mount['name']}"


def test_redis_config_map_is_the_shared_redis_conf_verbatim() -> None:
    conf = find("ConfigMap", "voxfleet-redis-conf")["data"]["redis.conf"]
    assert conf == (INFRA / "redis" / "redis.conf").read_text()
    redis = find("StatefulSet", "redis")["spec"]
    args = container(redis["template"]["spec"], "redis")["args"]
    mount = next(
        m
        for m in container(redis["template"]["spec"], "redis")["volumeMounts"]
        if m["name"] == "conf"
    )
    assert args[1] == f"{mount['mountPath']}/redis.conf"
    assert args[2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"  # AOF on a volume


def test_consumers_run_as_the_image_user_on_a_read_only_root() -> None:
    for owner, spec in consumer_pods():
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        main = container(spec, "consumer")
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, owner
        assert {m["mountPath"] for m in main["volumeMounts"]} == {"/tmp"}, owner
        assert main["livenessProbe"]["exec"]["command"] == ["python", "-m", "shared.heartbeat"]


def test_examples_are_not_in_the_applied_folder() -> None:
    # `kubectl apply -f infra/k8s/` must not create the placeholder Secrets.
    secrets = [p for p, d in k8s_documents() if d["kind"] == "Secret"]
    assert secrets and all(p.parent.name == "examples" for p in secrets)
    assert all(isinstance(p, Path) for p in secrets)
