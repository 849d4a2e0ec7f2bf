"""Segmentation quality under stress (issue #19): the whole microstructure job, at its default
parameters, on a phantom whose fibers touch and cross (``stress_spec``: volume fraction 0.30,
radius 4, noise SD a quarter of the fiber-matrix contrast, no blur), against its ground truth.
``python -m bench microstructure_quality`` sweeps noise and radius at 128^3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from producer.synth.fibers import stress_spec, truth_uri, write_phantom
from shared.jobspec import JobSpec
from shared.settings import Settings

# ITK's SWIG wrappers trip a Python 3.12-era DeprecationWarning on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

SIDE = 64


@pytest.fixture(scope="module")
def stressed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One job through the runner (a fresh local:2 cluster), its label mask and the truth."""
    from consumers.runner import execute

    root = tmp_path_factory.mktemp("quality")
    volume = root / "stress.zarr"
    write_phantom(str(volume), stress_spec((SIDE,) * 3, seed=19), Settings())
    spec = JobSpec(
        pipeline="microstructure",
        input_uri=str(volume),
        results_uri=str(root / "results"),
        cluster="local:2",
    )
    outcome = execute(spec, Settings())
    assert outcome.state == "done"
    attempt = next(p for p in Path(outcome.manifest_uri).parent.iterdir() if p.is_dir())
    labels = zarr.open_array(str(attempt / "fibers.ome.zarr/labels/fibers/s0"), mode="r")
    truth = zarr.open_array(truth_uri(str(volume)), mode="r")
    return {"seg": np.asarray(labels[:]) > 0, "truth": np.asarray(truth[:]) > 0}


def test_dice_on_touching_and_crossing_fibers_at_defaults(stressed: dict[str, Any]) -> None:
    seg, truth = stressed["seg"], stressed["truth"]
    assert truth.mean() == pytest.approx(0.30, abs=0.03)
    dice = 2 * np.count_nonzero(seg & truth) / (np.count_nonzero(seg) + np.count_nonzero(truth))
    assert dice >= 0.85


@pytest.mark.xfail(
    strict=True,
    reason="issue #19: at the default sigmas (1, 2) and threshold 0.1 the objectness misses the "
    "rims of radius-4 fibers and the junctions of crossing ones: the volume fraction comes out "
    "~5-6 points low (bench/results/microstructure_quality.json)",
)
def test_volume_fraction_within_two_points_at_defaults(stressed: dict[str, Any]) -> None:
    seg, truth = stressed["seg"], stressed["truth"]
    assert abs(100 * (seg.mean() - truth.mean())) <= 2.0
