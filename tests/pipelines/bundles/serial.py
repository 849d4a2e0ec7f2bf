"""What a user would write with dipy alone: the serial references the bundles and profiles
jobs are tested against, called exactly as the jobs call dipy."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from dipy.align.streamlinear import whole_brain_slr
from dipy.io.streamline import load_tractogram
from dipy.segment.bundles import RecoBundles, bundle_shape_similarity
from dipy.segment.clustering import QuickBundles
from dipy.segment.featurespeed import ResampleFeature
from dipy.segment.metricspeed import AveragePointwiseEuclideanMetric
from dipy.stats.analysis import afq_profile, gaussian_weights
from dipy.tracking.streamline import orient_by_streamline
from nibabel.streamlines.array_sequence import ArraySequence

# Small inputs, so a cheap registration (one similarity SLR, no small-cluster cut) keeps the tests
# lean; every parameter is passed to the serial reference exactly as the job passes it.
PARAMS: dict[str, Any] = {"slr_transform": "similarity", "slr_progressive": False}
SLR_MIN_CLUSTER = 1
SEED = 1


def serial_recobundles(
    tractogram_uri: str, atlas_dir: Path, names: list[str]
) -> tuple[Any, dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]:
    """Plain dipy: load the shards and the atlas, register once, cluster once, then recognise
    each bundle with its own seeded generator; bundle shape similarity to each model, and which
    recognised streamlines run against the model (dipy's orientation recipe)."""
    shards = sorted(Path(tractogram_uri).glob("*/shards/*.trk"))
    whole = ArraySequence()  # not `a + b`: ArraySequence adds coordinates
    for shard in shards:
        whole.extend(load_tractogram(str(shard), "same", bbox_valid_check=False).streamlines)
    models = {
        n: load_tractogram(str(atlas_dir / f"{n}.trk"), "same", bbox_valid_check=False).streamlines
        for n in names
    }
    static = models[names[0]].copy()
    for name in names[1:]:
        static.extend(models[name])
    moved, _, _, _ = whole_brain_slr(
        static,
        whole,
        x0="similarity",
        rm_small_clusters=SLR_MIN_CLUSTER,
        greater_than=50,
        less_than=250,
        progressive=False,
        rng=np.random.default_rng(SEED),
        num_threads=1,
    )
    rb = RecoBundles(
        moved, greater_than=50, less_than=np.inf, clust_thr=15, rng=np.random.default_rng(SEED)
    )
    labels, similarity, oriented = {}, {}, {}
    for name in names:
        rb.rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
        recognized, found = rb.recognize(
            models[name],
            model_clust_thr=2.5,
            reduction_thr=15,
            pruning_thr=8,
            reduction_distance="mdf",
            pruning_distance="mdf",
            slr=True,
            num_threads=1,
        )
        labels[name] = np.asarray(found, dtype=np.int64)
        oriented[name] = orientation(recognized, models[name])
        similarity[name] = bundle_shape_similarity(
            moved[labels[name]],
            models[name],
            np.random.default_rng([SEED, zlib.crc32(name.encode())]),
            threshold=6,
        )
    return whole, labels, similarity, oriented


def orientation(recognized: Any, model: Any) -> np.ndarray:
    """dipy's example recipe: orient by the model's QuickBundles centroid (100 nodes)."""
    metric = AveragePointwiseEuclideanMetric(ResampleFeature(nb_points=100))
    standard = QuickBundles(np.inf, metric=metric).cluster(model).centroids[0]
    oriented = orient_by_streamline(recognized, standard)
    pairs = zip(oriented, recognized, strict=True)
    return np.array([not np.array_equal(a[0], b[0]) for a, b in pairs], dtype=bool)


def serial_profiles(
    bundle: Any, flipped: np.ndarray, maps: Path, n_points: int = 100
) -> dict[str, np.ndarray]:
    """Plain dipy tractometry on one native bundle: Gaussian weights, afq_profile per map."""
    lines = ArraySequence([s[::-1] if f else s for s, f in zip(bundle, flipped, strict=True)])
    weights = gaussian_weights(lines, n_points=n_points)
    found = {}
    for metric in ("fa", "md"):
        image: Any = nib.load(str(maps / f"{metric}.nii.gz"))
        data = np.asarray(image.dataobj, dtype=np.float64)
        found[metric] = afq_profile(data, lines, image.affine, n_points=n_points, weights=weights)
    return found
