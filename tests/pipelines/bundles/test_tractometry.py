"""The tractometry chain on dipy's own bundles, job after committed job through the real runner
(on the session's cluster): bundles, then the ``profiles`` job that ``shared.chain`` says follows
it; every profile equals dipy's serial ``afq_profile`` over the same bundle and maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.image import imread

from consumers.runner import execute
from shared import chain
from shared.errors import InvalidInput
from shared.jobspec import JobSpec
from shared.manifest import Manifest
from shared.settings import Settings
from tests.pipelines.bundles.serial import (
    PARAMS,
    SLR_MIN_CLUSTER,
    serial_profiles,
    serial_recobundles,
)


def _run(spec: JobSpec, dask_client: Any) -> Manifest:
    address = dask_client.scheduler.address
    outcome = execute(spec, Settings(default_cluster=address))
    return Manifest.model_validate_json(Path(outcome.manifest_uri).read_bytes())


def _bundles_spec(tmp_path: Path, stores: tuple[str, str, str], **extra: Any) -> JobSpec:
    _, tractogram_uri, atlas_uri = stores
    params = {"atlas": atlas_uri, "slr_min_cluster": SLR_MIN_CLUSTER, **PARAMS, **extra}
    return JobSpec(
        pipeline="bundles",
        input_uri=tractogram_uri,
        results_uri=str(tmp_path / "out"),
        params=params,
    )


def test_profiles_job_follows_bundles_and_equals_serial_afq_profile(
    tmp_path: Path, stores: tuple[str, str, str], data: Any, dask_client: Any
) -> None:
    _, tractogram_uri, atlas_uri = stores
    first = _bundles_spec(tmp_path, stores)
    bundles = _run(first, dask_client)
    step = chain.next_step(first)
    assert step is not None and step.pipeline == "profiles"
    assert step.input_uri == f"{first.results_uri}/{first.result_prefix}"
    assert step.job_id == f"{first.job_id}-profiles" and step.subject == "sub_2"
    assert [s.pipeline for s in chain.steps(first)] == ["bundles", "profiles"]
    manifest = _run(step, dask_client)

    names = sorted(data[0][1])
    whole, labels, _, oriented = serial_recobundles(tractogram_uri, Path(atlas_uri), names)
    job = Path(first.results_uri) / step.result_prefix / manifest.attempt
    table = pq.read_table(job / "profiles.parquet").to_pylist()
    assert {r["subject"] for r in table} == {"sub_2"}
    assert {r["bundle"] for r in table} == set(names)
    maps = next(Path(tractogram_uri).glob("*/fa.nii.gz")).parent
    for name in names:
        expected = serial_profiles(whole[labels[name]], oriented[name], maps)
        for metric, values in expected.items():
            rows = [r for r in table if r["bundle"] == name and r["metric"] == metric]
            assert [r["node"] for r in rows] == list(range(100))
            ours = np.asarray([r["value"] for r in rows])
            assert np.abs(ours - values).max() <= 1e-9, (name, metric)
            assert np.ptp(values) > 0  # the synthetic maps vary along the bundle
            assert manifest.summary["mean"][name][metric] == pytest.approx(values.mean(), abs=1e-6)
    assert manifest.summary["bundles"] == names and manifest.summary["nodes"] == 100
    assert manifest.summary["metrics"] == ["fa", "md"]
    assert manifest.summary["bundles_job"]["job_key"] == bundles.job_key
    assert imread(job / "qc" / "profiles.png").ndim == 3
    # Provenance: the bundles and maps it read, as their manifests list them.
    read = manifest.provenance["inputs"]
    listed = {f["key"]: f["sha256"] for f in bundles.files}
    assert {o["key"] for o in read["bundles"]["objects"]} == {
        f"{bundles.attempt}/bundles/{n}.{ext}" for n in names for ext in ("trk", "flips.npy")
    }
    assert all(listed[o["key"]] == o["sha256"] for o in read["bundles"]["objects"])
    assert sorted(o["key"].rsplit("/", 1)[1] for o in read["maps"]["objects"]) == [
        "fa.nii.gz",
        "md.nii.gz",
    ]
    timing = json.loads((job / "timing.json").read_text())
    assert timing["profiles_tasks"] == len(names)
    assert sum(timing["profiles_workers_cpu_s"].values()) > 0


def test_profile_nodes_and_maps_are_parameters(
    tmp_path: Path, stores: tuple[str, str, str], data: Any, dask_client: Any
) -> None:
    """``bundles_params`` of the chain reach the profiles step: FA alone at 50 nodes."""
    _, tractogram_uri, atlas_uri = stores
    first = _bundles_spec(
        tmp_path, stores, profiles_params={"metrics": "fa", "profile_points": 50, "qc": False}
    )
    _run(first, dask_client)
    step = chain.next_step(first)
    assert step is not None
    manifest = _run(step, dask_client)
    job = Path(first.results_uri) / step.result_prefix / manifest.attempt
    table = pq.read_table(job / "profiles.parquet").to_pylist()
    assert {r["metric"] for r in table} == {"fa"} and max(r["node"] for r in table) == 49
    assert not (job / "qc").exists()
    names = sorted(data[0][1])
    whole, labels, _, oriented = serial_recobundles(tractogram_uri, Path(atlas_uri), names)
    maps = next(Path(tractogram_uri).glob("*/fa.nii.gz")).parent
    name = names[0]
    expected = serial_profiles(whole[labels[name]], oriented[name], maps, n_points=50)["fa"]
    ours = [r["value"] for r in table if r["bundle"] == name]
    assert np.abs(np.asarray(ours) - expected).max() <= 1e-9


def test_no_profiles_ends_the_chain(tmp_path: Path, stores: tuple[str, str, str]) -> None:
    spec = _bundles_spec(tmp_path, stores, profiles=False)
    assert chain.next_step(spec) is None
    # Whether profiles follow is not part of the bundles' key.
    assert spec.key == _bundles_spec(tmp_path, stores).key


@pytest.mark.parametrize("problem", ["no-result", "tractography", "no-md"])
def test_bad_input_fails_before_the_cluster(
    tmp_path: Path, stores: tuple[str, str, str], problem: str
) -> None:
    results, tractogram_uri, _ = stores
    params: dict[str, Any] = {}
    if problem == "no-result":
        uri, expect = f"{results}/sub_2/bundles/0123456789abcdef", "no committed result"
    elif problem == "tractography":
        uri, expect = tractogram_uri, "'tractography' result; profiles needs a bundles result"
    else:
        # A bundles result over a tractography result with FA alone, asked for MD too.
        bundles = Path(results) / "sub_2" / "bundles" / "fedcba9876543210"
        bundles.mkdir(parents=True)
        manifest = json.loads((Path(tractogram_uri) / "manifest.json").read_text())
        manifest |= {"pipeline": "bundles", "input_uri": tractogram_uri, "summary": {}}
        (bundles / "manifest.json").write_text(json.dumps(manifest))
        tract = json.loads((Path(tractogram_uri) / "manifest.json").read_text())
        tract["files"] = [f for f in tract["files"] if not f["key"].endswith("md.nii.gz")]
        (Path(tractogram_uri) / "manifest.json").write_text(json.dumps(tract))
        uri, expect = str(bundles), "has no md map"
        params = {"metrics": ["fa", "md"]}
    spec = JobSpec(
        pipeline="profiles", input_uri=uri, results_uri=str(tmp_path / "out"), params=params
    )
    # A cluster spec nothing listens on: the input's error must come first.
    settings = Settings(default_cluster="tcp://127.0.0.1:9")
    with pytest.raises(InvalidInput, match=expect) as caught:
        execute(spec, settings)
    assert "\n" not in str(caught.value)
