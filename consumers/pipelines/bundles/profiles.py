"""Tract profiles (tractometry): FA and MD along each recognised bundle, as the field does it.

Per bundle, pyAFQ's recipe with dipy's functions: every streamline resampled to ``n_points``
nodes, oriented so that node 0 lies at the same end for all of them, weighted by its Gaussian
(Mahalanobis) distance from the bundle's core (``dipy.stats.analysis.gaussian_weights``), and
the maps sampled and averaged node by node (``afq_profile``).

The orientation is decided in atlas space, against the model bundle: the recognition task
orients the recognised streamlines by the model's centroid (``orient_by_streamline``, the
centroid from ``QuickBundles`` with an infinite threshold over the model resampled to the same
nodes) and returns which of them it reversed (``flips``). The profile task reverses the same
streamlines in the subject's own space, so node 0 is the same anatomical end of a bundle in
every subject of a campaign, which is what lets profiles be compared across subjects. (A
bundle oriented by its own centroid would start at either end, subject by subject.)

One task per bundle on the cluster: the FA and MD volumes go to every worker once; a task gets
its bundle's streamlines and returns ``n_points`` values per map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

N_POINTS = 100


def model_standard(model: Any, n_points: int) -> NDArray[np.float64]:
    """The model bundle's centroid at ``n_points`` nodes: what streamlines are oriented by."""
    from dipy.segment.clustering import QuickBundles
    from dipy.segment.featurespeed import ResampleFeature
    from dipy.segment.metricspeed import AveragePointwiseEuclideanMetric

    metric = AveragePointwiseEuclideanMetric(ResampleFeature(nb_points=n_points))
    centroid: NDArray[np.float64] = QuickBundles(np.inf, metric=metric).cluster(model).centroids[0]
    return centroid


def flips(recognized: Any, model: Any, n_points: int = N_POINTS) -> NDArray[np.bool_]:
    """Which recognised streamlines (atlas space) run against the model bundle."""
    from dipy.tracking.streamline import orient_by_streamline

    if len(recognized) == 0:
        return np.zeros(0, dtype=bool)
    oriented = orient_by_streamline(recognized, model_standard(model, n_points))
    return np.array(
        [not np.array_equal(a[0], b[0]) for a, b in zip(oriented, recognized, strict=True)],
        dtype=bool,
    )


def oriented(streamlines: Any, flipped: NDArray[np.bool_]) -> Any:
    """The streamlines with the ``flipped`` ones reversed (an ``ArraySequence``: dipy's
    ``Streamlines``, which the profile functions read)."""
    from nibabel.streamlines.array_sequence import ArraySequence

    return ArraySequence([s[::-1] if f else s for s, f in zip(streamlines, flipped, strict=True)])


def profile(
    bundle: Any,
    maps: dict[str, NDArray[np.float64]],
    affine: NDArray[np.float64],
    n_points: int = N_POINTS,
) -> dict[str, NDArray[np.float64]]:
    """``afq_profile`` of every map along an oriented bundle, Gaussian-weighted."""
    from dipy.stats.analysis import afq_profile, gaussian_weights

    weights = gaussian_weights(bundle, n_points=n_points)
    return {
        metric: np.asarray(
            afq_profile(data, bundle, affine, n_points=n_points, weights=weights), dtype=np.float64
        )
        for metric, data in maps.items()
    }


def profile_task(
    part: tuple[str, Any, NDArray[np.bool_]],
    maps: dict[str, NDArray[np.float64]],
    affine: NDArray[np.float64],
    n_points: int,
) -> dict[str, Any]:
    """Runs on a worker: one bundle's profiles (None for a bundle with too few streamlines:
    the Gaussian weights need a covariance, so at least two)."""
    name, streamlines, flipped = part
    if len(streamlines) < 2:
        return {"name": name, "profiles": None}
    bundle = oriented(streamlines, flipped)
    return {"name": name, "profiles": profile(bundle, maps, affine, n_points)}


def write_table(path: Path, subject: str, profiles: dict[str, dict[str, Any]]) -> Path:
    """``profiles.parquet``: the long table (subject, bundle, node, metric, value), a row per
    node of every map of every profiled bundle."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {k: [] for k in ("subject", "bundle", "node", "metric")}
    values: list[float] = []
    for bundle, maps in sorted(profiles.items()):
        for metric, profile_values in maps.items():
            n = len(profile_values)
            columns["subject"] += [subject] * n
            columns["bundle"] += [bundle] * n
            columns["node"] += list(range(n))
            columns["metric"] += [metric] * n
            values += [float(v) for v in profile_values]
    table = pa.table(
        {
            **{k: pa.array(v, pa.string()) for k, v in columns.items() if k != "node"},
            "node": pa.array(columns["node"], pa.int32()),
            "value": pa.array(values, pa.float64()),
        }
    ).select(["subject", "bundle", "node", "metric", "value"])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
