"""Bad input through a real consumer: a failed state with a one-line reason, no retry, and the
message in the dead-letter list -- and the consumer keeps running."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from kombu import Connection, Exchange, Producer

from consumers.app import TASK_NAME, make_app
from consumers.ledger import Ledger
from producer.jobs import submit, wait_for
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.integration.harness import upload_dir

pytestmark = pytest.mark.usefixtures("consumer")
DWI = "T1w/Diffusion"


def _delete_data(d: Path) -> None:
    (d / DWI / "data.nii.gz").unlink()


def _garbage(d: Path) -> None:
    (d / DWI / "data.nii.gz").write_bytes(b"this is not a NIfTI file" * 100)


def _truncate(d: Path) -> None:
    path = d / DWI / "data.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bvals_short(d: Path) -> None:
    path = d / DWI / "bvals"
    path.write_text(" ".join(path.read_text().split()[:-1]) + "\n")


def _dwi_3d(d: Path) -> None:
    img = nib.load(d / DWI / "data.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), d / DWI / "data.nii.gz")


def _mask_shape(d: Path) -> None:
    img = nib.load(d / DWI / "nodif_brain_mask.nii.gz")
    small = np.asarray(img.dataobj)[:-2, :, :]
    nib.save(nib.Nifti1Image(small, img.affine), d / DWI / "nodif_brain_mask.nii.gz")


FILE_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing-dwi": (_delete_data, "data.nii.gz"),
    "garbage-nifti": (_garbage, "data.nii.gz"),
    "truncated-nifti": (_truncate, "data.nii.gz"),
    "bvals-count": (_bvals_short, "bval"),
    "dwi-3d": (_dwi_3d, "4D"),
    "mask-shape": (_mask_shape, "mask"),
}


def assert_failed_once(settings: Settings, job_id: str, needle: str) -> dict[str, str]:
    record = wait_for([job_id], settings, timeout_s=120)[job_id]
    assert record["state"] == "failed", record
    reason = record["reason"]
    assert needle.lower() in reason.lower(), reason
    assert "\n" not in reason and len(reason) <= 400
    assert record.get("attempts", "0") in ("0", "1"), record  # never retried
    dead = Ledger.from_url(settings.broker_url.get_secret_value(), 60).dead_letters(200)
    assert any(d["job_id"] == job_id for d in dead), "not in the dead-letter list"
    return record


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_subject_files(
    case: str, subject_dir: Path, tmp_path: Path, bucket: str, s3_endpoint: str, settings: Settings
) -> None:
    mutate, needle = FILE_CASES[case]
    broken = tmp_path / "100307"
    shutil.copytree(subject_dir, broken)
    mutate(broken)
    uri = upload_dir(broken, bucket, "hcp/100307", s3_endpoint)
    spec = JobSpec(pipeline="dti", input_uri=uri, results_uri=f"s3://{bucket}/results")
    submit([spec], settings)
    assert_failed_once(settings, spec.job_id, needle)


def _raw_task(settings: Settings, body: object, **options: object) -> str:
    """Publish a task message that skips our producer's validation, as a hostile client could."""
    job_id = uuid.uuid4().hex
    app = make_app(settings)
    app.send_task(TASK_NAME, args=[body], task_id=job_id, **options)  # type: ignore[arg-type]
    app.close()
    return job_id


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("subject", "../../etc", "subject"),
        ("subject", "a/b", "subject"),
        ("pipeline", "nope", "pipeline"),
    ],
)
def test_hostile_or_unknown_fields_in_a_raw_message(
    settings: Settings, field: str, value: str, needle: str
) -> None:
    body = {
        "pipeline": "dti",
        "input_uri": "s3://b/hcp/1",
        "results_uri": "s3://b/out",
        field: value,
    }
    assert_failed_once(settings, _raw_task(settings, body), needle)


def test_pickle_message_is_rejected_without_being_deserialised(
    settings: Settings, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(canary),))  # type: ignore[return-value]

    job_id = _raw_task(settings, Exploit(), serializer="pickle")
    assert_failed_once(settings, job_id, "not accepted")
    assert not canary.exists()
    dead = Ledger.from_url(settings.broker_url.get_secret_value(), 60).dead_letters(50)
    assert any(d["job_id"] == job_id and "pwned" in d["body"] for d in dead)


def test_non_json_body_is_rejected(settings: Settings) -> None:
    job_id = uuid.uuid4().hex
    with Connection(settings.broker_url.get_secret_value()) as conn:
        producer = Producer(
            conn, exchange=Exchange(settings.queue, "direct"), routing_key=settings.queue
        )
        producer.publish(
            b"{this is not json",
            content_type="application/json",
            content_encoding="utf-8",
            serializer=None,
            headers={
                "task": TASK_NAME,
                "id": job_id,
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
            declare=[],
        )
    assert_failed_once(settings, job_id, "decode")


def test_cli_rejects_before_enqueueing(settings: Settings, tmp_path: Path) -> None:
    env = {"VOXFLEET_BROKER_URL": settings.broker_url.get_secret_value(), "PATH": "/usr/bin:/bin"}
    for args, needle in [
        (["enqueue", "nope", str(tmp_path), "--results", str(tmp_path)], "pipeline"),
        (
            [
                "enqueue",
                "dti",
                str(tmp_path / "x"),
                "--results",
                "/o",
                "--param",
                "fit_method=MAGIC",
            ],
            "fit_method",
        ),
        (["enqueue", "dti", str(tmp_path / "x"), "--results", "/o", "--param", "bogus=1"], "bogus"),
        (["enqueue", "dti", "s3://b/hcp/a..b/..", "--results", "/o"], ".."),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "producer", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert needle in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_consumer_survives_all_of_it(consumer: subprocess.Popen[bytes]) -> None:
    assert consumer.poll() is None
