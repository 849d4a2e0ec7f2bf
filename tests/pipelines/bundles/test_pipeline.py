"""The bundles job equals dipy's serial RecoBundles calls, bundle for bundle and index for index,
on dipy's own bundles: subject 1's three bundles are the atlas, subject 2's three merged are the
"whole brain" (so the truth is known); and every input problem fails before a cluster starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dipy.io.streamline import load_tractogram
from dipy.segment.bundles import bundle_shape_similarity
from matplotlib.image import imread

from consumers.pipelines.bundles import pipeline as bundles
from consumers.runner import execute
from shared.errors import InvalidInput
from shared.jobspec import JobSpec
from shared.settings import Settings
from tests.pipelines.bundles.context import make_ctx
from tests.pipelines.bundles.serial import PARAMS, SLR_MIN_CLUSTER, serial_recobundles


def test_bundles_equal_serial_recobundles_and_find_the_truth(
    tmp_path: Path, stores: tuple[str, str, str], data: Any, dask_client: Any
) -> None:
    _, tractogram_uri, atlas_uri = stores
    params = {"atlas": atlas_uri, "slr_min_cluster": SLR_MIN_CLUSTER, **PARAMS}
    ctx = make_ctx(tmp_path, tractogram_uri, params)
    bundles.check(ctx)
    loaded = bundles.load(ctx)
    result = bundles.run(ctx, loaded, dask_client)

    subjects, _ = data
    names = sorted(subjects[1])
    whole, reference, similarity, oriented = serial_recobundles(
        tractogram_uri, Path(atlas_uri), names
    )
    summary = {b["name"]: b for b in result.summary["bundles"]}
    assert sorted(summary) == names
    start = 0
    for name in names:  # merged() concatenates in name order: each bundle's span is its truth
        truth = np.arange(start, start + len(subjects[2][name]))
        start += len(truth)
        indices = np.load(result.uploads[f"bundles/{name}.indices.npy"])
        # The same streamlines, in the same order, as the serial call.
        assert np.array_equal(indices, reference[name]), name
        # Oriented as dipy's recipe orients them against the model, for the profiles job.
        flips = np.load(result.uploads[f"bundles/{name}.flips.npy"])
        assert flips.dtype == bool and np.array_equal(flips, oriented[name]), name
        # Recognised: nothing from the other two bundles, nearly all of its own.
        assert np.isin(indices, truth).all(), name
        assert len(indices) >= 0.9 * len(truth), (name, len(indices))
        # The output tractogram is the subject's streamlines, as tracked (native space).
        out = load_tractogram(
            str(result.uploads[f"bundles/{name}.trk"]), "same", bbox_valid_check=False
        ).streamlines
        assert len(out) == len(indices) == summary[name]["streamlines"]
        assert np.array_equal(out.get_data(), whole[indices].get_data())
        assert summary[name]["shape_similarity"] == pytest.approx(similarity[name], abs=1e-6)
        # Shape similarity to the truth (subject 2's own bundle), recorded for the docs.
        to_truth = bundle_shape_similarity(
            out, subjects[2][name], np.random.default_rng(0), threshold=6
        )
        print(f"{name}: {len(indices)}/{len(truth)}, BA to model {similarity[name]:.3f}, "
              f"to truth {to_truth:.3f}")  # fmt: skip
        assert to_truth >= 0.9, (name, to_truth)

    assert result.summary["recognized"] == sum(len(v) for v in reference.values())
    assert result.summary["tractography"]["shards"] == 3
    image = imread(result.uploads["qc/bundles.png"])
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 200
    busy = ctx.timer.extra["recognize_workers_busy_s"]
    assert sum(busy.values()) > 0 and set(busy) <= set(dask_client.scheduler_info()["workers"])


def test_trx_atlas_in_trx_bundles_out(
    tmp_path: Path, stores: tuple[str, str, str], data: Any, dask_client: Any
) -> None:
    """The atlas as .trx files, the bundles written as .trx: the same streamlines as the .trk
    path and the serial calls, and every output opens with dipy against its own header."""
    from dipy.io.streamline import save_tractogram

    _, tractogram_uri, atlas_uri = stores
    trx_atlas = tmp_path / "atlas-trx"
    trx_atlas.mkdir()
    for trk in sorted(Path(atlas_uri).glob("*.trk")):
        sft = load_tractogram(str(trk), "same", bbox_valid_check=False)
        save_tractogram(sft, str(trx_atlas / f"{trk.stem}.trx"), bbox_valid_check=False)
    assert not list(trx_atlas.glob("*.trk"))
    params = {
        "atlas": str(trx_atlas),
        "slr_min_cluster": SLR_MIN_CLUSTER,
        "output_format": "trx",
        "qc": False,
        **PARAMS,
    }
    ctx = make_ctx(tmp_path, tractogram_uri, params)
    result = bundles.run(ctx, bundles.load(ctx), dask_client)

    names = sorted(data[0][1])
    whole, reference, _, _ = serial_recobundles(tractogram_uri, Path(atlas_uri), names)
    assert sorted(f["key"] for f in result.summary["atlas"]["files"]) == [f"{n}.trx" for n in names]
    for name in names:
        indices = np.load(result.uploads[f"bundles/{name}.indices.npy"])
        assert np.array_equal(indices, reference[name]), name
        path = result.uploads[f"bundles/{name}.trx"]
        assert path.suffix == ".trx"
        out = load_tractogram(str(path), "same", bbox_valid_check=False).streamlines
        assert np.allclose(out.get_data(), whole[indices].get_data(), atol=1e-4)


@pytest.mark.parametrize("problem", ["no-result", "uncommitted", "not-tractography"])
def test_bad_tractography_input_fails_before_the_cluster(
    tmp_path: Path, stores: tuple[str, str, str], problem: str
) -> None:
    results, tractogram_uri, atlas_uri = stores
    if problem == "no-result":
        uri = f"{results}/sub_2/tractography/0123456789abcdef"
    elif problem == "uncommitted":
        uri = tractogram_uri
        (Path(uri) / "manifest.json").unlink()  # its shards are there; it never committed
    else:
        dti = Path(results) / "sub_2" / "dti" / "fedcba9876543210"
        dti.mkdir(parents=True)
        text = (Path(tractogram_uri) / "manifest.json").read_text()
        (dti / "manifest.json").write_text(text.replace('"tractography"', '"dti"'))
        uri = str(dti)
    expect = {"no-result": "no committed result", "uncommitted": "no committed result"}
    _fails_first(tmp_path, uri, {"atlas": atlas_uri}, expect.get(problem, "'dti' result"))


@pytest.mark.parametrize("problem", ["missing", "empty", "no-bundles"])
def test_bad_atlas_fails_before_the_cluster(
    tmp_path: Path, stores: tuple[str, str, str], problem: str
) -> None:
    _, tractogram_uri, _ = stores
    atlas = tmp_path / f"atlas-{problem}"
    if problem != "missing":
        atlas.mkdir()
    if problem == "no-bundles":
        (atlas / "README.txt").write_text("not a bundle")
        (atlas / "whole_brain").mkdir()
        (atlas / "whole_brain" / "wb.trk").write_bytes(b"")
    _fails_first(tmp_path, tractogram_uri, {"atlas": str(atlas)}, "holds no model bundles")


def _fails_first(tmp_path: Path, input_uri: str, params: dict[str, Any], expect: str) -> None:
    """Through the real runner, with a cluster spec nothing listens on: the error must be the
    input's (permanent, one line), raised before any cluster is reached."""
    spec = JobSpec(
        pipeline="bundles", input_uri=input_uri, results_uri=str(tmp_path / "out"), params=params
    )
    with pytest.raises(InvalidInput, match=expect) as caught:
        execute(spec, Settings(default_cluster="tcp://127.0.0.1:9"))
    assert "\n" not in str(caught.value)


def test_subject_and_key_follow_the_tractography_result(stores: tuple[str, str, str]) -> None:
    _, tractogram_uri, atlas_uri = stores
    spec = JobSpec(
        pipeline="bundles",
        input_uri=f"{tractogram_uri}/manifest.json",
        results_uri="/tmp/out",
        params={"atlas": atlas_uri},
    )
    assert spec.subject == "sub_2" and spec.input_uri == tractogram_uri
    assert spec.result_prefix.startswith("sub_2/bundles/")
    other = spec.model_copy(update={"input_uri": tractogram_uri[:-1] + "0"})
    assert JobSpec.model_validate(other.to_message()).key != spec.key
