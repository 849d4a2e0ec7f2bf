"""infra/compose.yaml against the Compose Specification twice -- its JSON schema (as vendored by
check-jsonschema) on the file as written, and a strict parser (compose-spec, the compose_spec
Rust crate) on the file as `docker compose` would interpolate it from `.env.example` -- plus
what neither knows: references, files, shutdown timing."""

from __future__ import annotations

import copy
import functools
import json
import re
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
from compose_spec import PyCompose, PyOptions

from tests.infra.manifests import INFRA, MIN_GRACE_S, REPO, compose, compose_env

SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(files(SCHEMA_PACKAGE).joinpath("compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(doc: dict[str, Any]) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in _validator().iter_errors(doc)]


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    assert _errors(compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "consumer", "stop_grace_periodd"), "3600s"),  # misspelt key
        (("services", "consumer", "command"), {"worker": True}),  # wrong type
        (("services", "consumer", "depends_on", "redis", "condition"), "service_ready"),  # enum
    ],
)
def test_the_schema_check_rejects_broken_variants(path: tuple[str, ...], value: object) -> None:
    doc = copy.deepcopy(compose())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(doc), f"schema accepted {path} = {value!r}"


# --- the strict parser, after interpolation ----------------------------------------------------
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolated(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${X}, ${X:-default}, ${X-default}, ${X:?error}; $$ stays."""

    def value(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$$"
        name, op, arg = match[1], match[2], match[3]
        if op in (":-", "-"):
            return env.get(name) or arg
        if op in (":?", "?") and not env.get(name):
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        return env.get(name, "")

    return _VARIABLE.sub(value, text)


def _example_env() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def _parse(text: str) -> PyCompose:
    compose_file = PyOptions(apply_merge=True).from_yaml(_interpolated(text, _example_env()))
    compose_file.validate()
    return compose_file


def test_strict_parser_accepts_the_interpolated_file() -> None:
    parsed = _parse((INFRA / "compose.yaml").read_text())
    assert set(parsed.service_names()) == set(compose()["services"])
    consumer = parsed.to_dict()["services"]["consumer"]
    assert consumer["environment"]["VOXFLEET_BROKER_URL"].startswith("redis://:change-me")
    assert consumer["stop_grace_period"] == "1h"  # 3600s, parsed as a duration


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("stop_grace_period: 3600s", "stop_grace_periodd: 3600s"),
        ("stop_grace_period: 3600s", "stop_grace_period: 3600 seconds"),
        ("condition: service_healthy", "condition: service_ready"),
    ],
)
def test_strict_parser_rejects_broken_variants(old: str, new: str) -> None:
    text = (INFRA / "compose.yaml").read_text()
    assert old in text
    with pytest.raises(ValueError):
        _parse(text.replace(old, new, 1))


def test_the_stack_has_every_part() -> None:
    services = compose()["services"]
    assert {"redis", "minio", "consumer", "flower", "synth", "producer"} <= set(services)
    # The producer example is one-shot and opt-in.
    for name in ("synth", "producer"):
        assert services[name]["profiles"] == ["example"]
        assert services[name]["restart"] == "no"
    assert services["producer"]["command"][:2] == ["campaign", "submit"]


def test_depends_on_and_volumes_point_at_things_that_exist() -> None:
    doc = compose()
    services, volumes = doc["services"], doc.get("volumes") or {}
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"
    build = services["consumer"]["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).resolve() == INFRA / "Dockerfile"


def test_redis_uses_the_shared_conf_with_a_password_and_a_volume() -> None:
    redis = compose()["services"]["redis"]
    mounts = dict(m.split(":")[:2] for m in redis["volumes"])
    conf_path = redis["command"][1]
    assert mounts["./redis/redis.conf"] == conf_path  # infra/redis/redis.conf, unmodified
    assert "/data" in mounts.values()  # the append-only file survives the container
    assert redis["command"][2] == "--requirepass" and "REDIS_PASSWORD" in redis["command"][3]
    conf = (INFRA / "redis" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)


def test_consumers_get_long_enough_to_finish_the_job_in_hand() -> None:
    consumer = compose()["services"]["consumer"]
    assert int(consumer["stop_grace_period"].rstrip("s")) >= MIN_GRACE_S


def test_every_voxfleet_container_reaches_redis_and_minio_with_a_password() -> None:
    env = compose_env()
    assert set(env) == {"consumer", "synth", "producer"}
    for name, values in env.items():
        assert re.fullmatch(
            r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", values["VOXFLEET_BROKER_URL"]
        ), name
        assert values["VOXFLEET_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(values), name
    flower = compose()["services"]["flower"]["environment"]["CELERY_BROKER_URL"]
    assert flower == env["consumer"]["VOXFLEET_BROKER_URL"]  # Flower watches the same broker


def test_env_example_names_every_required_variable() -> None:
    text = (INFRA / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {
        line.split("=", 1)[0]
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required <= example, required - example
    assert (REPO / "infra" / "compose.yaml").is_file()
