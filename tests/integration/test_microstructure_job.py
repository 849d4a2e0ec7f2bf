"""End to end: a fiber phantom (Zarr) in S3 -> JobSpec submitted -> the real consumer (local:2
Dask cluster, workers reading and writing S3 through the ObjectStore-backed Zarr store) ->
OME-Zarr, stats.json, QC PNG and a manifest in S3, opened with ome-zarr-py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from producer.jobs import submit, wait_for
from producer.synth.fibers import PhantomSpec, truth_uri, write_phantom
from shared.jobspec import JobSpec
from shared.manifest import Manifest
from shared.settings import Settings
from shared.store import open_store
from tests.integration.harness import upload_dir

pytestmark = [
    pytest.mark.usefixtures("consumer"),
    pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning"),
]


def test_microstructure_job_from_s3_to_ome_zarr(
    bucket: str, settings: Settings, tmp_path: Path
) -> None:
    volume_uri = f"s3://{bucket}/volumes/sample1.zarr"
    phantom = write_phantom(volume_uri, PhantomSpec(shape=(64, 64, 64), seed=5), settings)
    assert open_store(truth_uri(volume_uri), settings).exists("zarr.json")  # truth beside it
    results = f"s3://{bucket}/results"
    spec = JobSpec(
        pipeline="microstructure",
        input_uri=volume_uri,
        results_uri=results,
    )
    submit([spec], settings)
    record = wait_for([spec.job_id], settings, timeout_s=300)[spec.job_id]
    assert record["state"] == "done", record

    # The manifest is the result: everything it lists exists with its size and checksum.
    store = open_store(results, settings)
    prefix = record["result"].removeprefix(f"{results}/").removesuffix("/manifest.json")
    manifest = Manifest.model_validate_json(store.get_bytes(f"{prefix}/manifest.json"))
    job = store.child(prefix)
    local = tmp_path / "job"
    names = set()
    for entry in manifest.files:
        data = job.get_bytes(entry["key"])
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        name = entry["key"].split("/", 1)[1]  # below the attempt folder
        names.add(name)
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    assert {"stats.json", "qc/fibers.png", "timing.json", "fibers.ome.zarr/zarr.json"} <= names
    assert "fibers.ome.zarr/labels/fibers/s0/c/0/0/0" in names
    # Nothing the workers wrote is missing from the manifest.
    attempt = manifest.files[0]["key"].split("/", 1)[0]
    assert {k.split("/", 1)[1] for k in job.list(attempt)} == names

    timing = json.loads((local / "timing.json").read_text())
    for stage in ("load", "cluster_acquire", "objectness", "label", "write", "qc", "publish"):
        assert stage in timing["stages_s"], stage
    assert len(timing["objectness_workers_busy_s"]) == 1  # 64^3: one chunk is cheapest

    stats = json.loads((local / "stats.json").read_text())
    assert stats["threshold"] == {"value": 0.1, "method": "given"}
    assert stats["gamma"]["method"] == "0.6 x noise" and stats["gamma"]["sample"]["voxels"] > 0
    assert stats == {**stats, **manifest.summary}

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(local / "fibers.ome.zarr")))())
    assert any(isinstance(s, Multiscales) for s in nodes[0].specs)
    assert nodes[0].data[0].shape == (64, 64, 64)
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1
    seg = np.asarray(labels[0].data[0]) > 0
    truth_store = open_store(truth_uri(volume_uri), settings)
    truth_dir = tmp_path / "truth.zarr"
    for key in truth_store.list():
        (truth_dir / key).parent.mkdir(parents=True, exist_ok=True)
        (truth_dir / key).write_bytes(truth_store.get_bytes(key))
    expected = zarr.open_array(str(truth_dir), mode="r")[:] > 0
    dice = 2 * np.count_nonzero(seg & expected) / (seg.sum() + expected.sum())
    assert dice > 0.85, dice  # a 64^3 volume is mostly border; the 96^3+ tests hold 0.9
    assert abs(manifest.summary["volume_fraction"] - phantom.volume_fraction) < 0.03


def _tiff_stack(volume: np.ndarray, folder: Path) -> str:
    import tifffile

    (folder / "recon").mkdir()
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / "recon" / f"recon_{z:05d}.tiff", plane)
    return "recon"


def _dxchange(volume: np.ndarray, folder: Path) -> str:
    import h5py  # type: ignore[import-untyped]

    with h5py.File(folder / "scan.h5", "w") as f:
        data = f.create_dataset("exchange/data", data=volume, chunks=(16, 48, 48))
        data.attrs["voxel_size"] = [1.0, 1.0, 1.0]
        data.attrs["unit"] = "micrometer"
        f.create_dataset("exchange/theta", data=np.linspace(0, 180, 10))
    return "scan.h5"


def _zarr_v2(volume: np.ndarray, folder: Path) -> str:
    # As xarray writes a dataset: a Zarr v2 group holding the volume and a 1D coordinate.
    group = zarr.open_group(str(folder / "scan.zarr"), mode="w", zarr_format=2)
    group.create_array("recon", data=volume, chunks=(16, 48, 48))
    group.create_array("z", data=np.arange(volume.shape[0], dtype=np.float64))
    return "scan.zarr"


def _ome_zarr(version: str) -> Any:
    def write(volume: np.ndarray, folder: Path) -> str:
        from ome_zarr.format import FormatV04, FormatV05
        from ome_zarr.writer import write_multiscale

        v04 = version == "0.4"
        group = zarr.open_group(
            str(folder / "scan.ome.zarr"), mode="w", zarr_format=2 if v04 else 3
        )
        write_multiscale(
            [volume, volume[::2, ::2, ::2]],
            group,
            fmt=FormatV04() if v04 else FormatV05(),
            axes=[{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            coordinate_transformations=[
                [{"type": "scale", "scale": [1.0, 1.0, 1.0]}],
                [{"type": "scale", "scale": [2.0, 2.0, 2.0]}],
            ],
        )
        return "scan.ome.zarr"

    return write


@pytest.mark.parametrize(
    ("fmt", "write", "unit"),
    [
        ("tiff", _tiff_stack, None),
        ("hdf5", _dxchange, "micrometer"),
        ("zarr-v2", _zarr_v2, None),
        ("ome-zarr-0.4", _ome_zarr("0.4"), "micrometer"),
        ("ome-zarr-0.5", _ome_zarr("0.5"), "micrometer"),
    ],
)
def test_microstructure_job_reads_every_input_format_from_s3(
    fmt: str, write: Any, unit: str | None, bucket: str, settings: Settings, tmp_path: Path
) -> None:
    """A 48^3 phantom as TIFF slices, a DXchange HDF5 file, an xarray-style Zarr v2 group and
    OME-Zarr 0.4 and 0.5 images (in a scan's folder) on S3: the consumer checks the headers,
    its workers read their chunks with ranged reads, and the phantom's fibers are found."""
    local = tmp_path / "phantom.zarr"
    phantom = write_phantom(str(local), PhantomSpec(shape=(48, 48, 48), seed=8), settings)
    volume = zarr.open_array(str(local), mode="r")[:]
    (tmp_path / "upload" / fmt).mkdir(parents=True)
    name = f"{fmt}/{write(volume, tmp_path / 'upload' / fmt)}"
    assert settings.s3_endpoint_url is not None
    volumes = upload_dir(tmp_path / "upload", bucket, "volumes", settings.s3_endpoint_url)
    input_uri = f"{volumes}/{name}"
    spec = JobSpec(
        pipeline="microstructure",
        input_uri=input_uri,
        results_uri=f"s3://{bucket}/results",
        params={"qc": False},
    )
    submit([spec], settings)
    record = wait_for([spec.job_id], settings, timeout_s=300)[spec.job_id]
    assert record["state"] == "done", record
    store = open_store(f"s3://{bucket}/results", settings)
    key = record["result"].removeprefix(f"s3://{bucket}/results/")
    summary = Manifest.model_validate_json(store.get_bytes(key)).summary
    assert summary["shape"] == [48, 48, 48] and summary["dtype"] == "uint16"
    assert summary["unit"] == unit and summary["voxel_size"] == [1.0, 1.0, 1.0]
    assert summary["fibers"] > 0
    assert abs(summary["volume_fraction"] - phantom.volume_fraction) < 0.05, summary
