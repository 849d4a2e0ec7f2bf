"""RecoBundles, one model bundle per cluster task, equal to dipy's serial calls.

dipy's ``RecoBundles`` clusters the whole tractogram once (its constructor) and then recognises
each model bundle with ``recognize``, which draws from the object's ``rng`` (model clustering,
the streamlines its local SLR samples, the pruning clusters). With one generator shared by a
loop over bundles, a bundle's result depends on every bundle recognised before it, so no
parallel order could reproduce it. Here each bundle draws from its own generator, seeded from
the job's seed and the bundle's *name*: the result of ``AF_L`` is the same whether the atlas has
3 bundles or 80 and whichever worker takes it, and equals a serial loop that sets
``rb.rng = bundle_rng(seed, name)`` before each ``rb.recognize`` (dipy's own API; the tests and
the benchmark run exactly that loop).

The clustered tractogram (the ``RecoBundles`` object) goes to every worker once; a task takes a
reference to it plus its model bundle, and returns the recognised streamlines' indices in the
subject's tractogram and a few numbers -- never the streamlines themselves.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.params import BundlesParams

#: dipy's bundle_shape_similarity distance threshold (mm) in its own examples: two bundles whose
#: centroids are within 6 mm of each other count as adjacent.
SHAPE_THRESHOLD_MM = 6.0
#: One thread per task: Dask workers run one task per core, and dipy's OpenMP SLR metric sums
#: in an order that depends on the thread count, which would break equality with serial.
TASK_THREADS = 1


def bundle_rng(seed: int, name: str) -> np.random.Generator:
    """The generator one bundle's recognition draws from: a function of the seed and the name
    only (crc32: stable across processes, unlike ``hash``)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class RecognitionOptions:
    """The ``recognize`` arguments every task shares (small, pickled into each task)."""

    seed: int
    model_clust_thr: float
    reduction_thr: float
    pruning_thr: float
    slr: bool

    @classmethod
    def from_params(cls, params: BundlesParams) -> RecognitionOptions:
        return cls(
            seed=params.random_seed,
            model_clust_thr=params.model_clust_thr,
            reduction_thr=params.reduction_thr,
            pruning_thr=params.pruning_thr,
            slr=params.local_slr,
        )

    def recognize_kwargs(self) -> dict[str, Any]:
        """Exactly what the serial reference passes to ``RecoBundles.recognize``."""
        return {
            "model_clust_thr": self.model_clust_thr,
            "reduction_thr": self.reduction_thr,
            "pruning_thr": self.pruning_thr,
            "reduction_distance": "mdf",
            "pruning_distance": "mdf",
            "slr": self.slr,
            "num_threads": TASK_THREADS,
        }


@dataclass(frozen=True)
class ModelBundle:
    """One atlas bundle: sent to a worker inside its recognition task."""

    name: str
    streamlines: Any  # nibabel ArraySequence, RAS mm in atlas space

    @property
    def cost(self) -> int:
        """A size to schedule the largest first by (points: what QuickBundles and SLR scan)."""
        return int(self.streamlines.get_data().shape[0])


def make_recognizer(moved: Any, params: BundlesParams) -> Any:
    """dipy's ``RecoBundles`` over the subject's registered streamlines: the whole-brain
    clustering, done once per job, with the job's seed."""
    from dipy.segment.bundles import RecoBundles

    return RecoBundles(
        moved,
        greater_than=params.min_length,
        less_than=np.inf,
        clust_thr=params.clust_thr,
        rng=np.random.default_rng(params.random_seed),
    )


def recognize(
    recognizer: Any, model: ModelBundle, options: RecognitionOptions
) -> tuple[NDArray[np.int64], Any]:
    """Indices (into the tractogram the recognizer was built on) of the streamlines that form
    ``model``, in dipy's order, and those streamlines in atlas space (before the local SLR)."""
    own = copy.copy(recognizer)  # shallow: shares the clustered tractogram, not the generator
    own.rng = bundle_rng(options.seed, model.name)
    _, labels = own.recognize(model.streamlines, **options.recognize_kwargs())
    labels = np.asarray(labels, dtype=np.int64)
    # RecoBundles keeps the streamlines longer than its threshold: map back to its own rows.
    rows = np.searchsorted(recognizer.filtered_indices, labels)
    return labels, own.streamlines[rows]


def shape_similarity(recognized: Any, model: ModelBundle, seed: int) -> float:
    """dipy's bundle adjacency of the recognised bundle to its model, both in atlas space: 1 when
    every centroid of each has a neighbour in the other within ``SHAPE_THRESHOLD_MM``."""
    from dipy.segment.bundles import bundle_shape_similarity

    return float(
        bundle_shape_similarity(
            recognized,
            model.streamlines,
            bundle_rng(seed, model.name),
            threshold=SHAPE_THRESHOLD_MM,
        )
    )


def recognize_task(
    model: ModelBundle, recognizer: Any, options: RecognitionOptions
) -> dict[str, Any]:
    """Runs on a worker: recognise one model bundle; return its indices and numbers."""
    labels, recognized = recognize(recognizer, model, options)
    similarity = shape_similarity(recognized, model, options.seed) if len(labels) else 0.0
    from consumers.pipelines.bundles.profiles import flips

    return {
        "name": model.name,
        "labels": labels,
        "shape_similarity": similarity,
        "model_streamlines": len(model.streamlines),
        # For the tract profiles: which streamlines run against the model (profiles.py).
        "flips": flips(recognized, model.streamlines),
    }
