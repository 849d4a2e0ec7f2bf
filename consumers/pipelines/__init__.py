"""The pipeline registry: name -> ``Pipeline(load, run)``. Imported once by the consumer.

The registry is built on first use, not when the package is imported: a Dask worker that
unpickles a task function from ``consumers.pipelines.<module>`` imports this package first, and
building the registry here would import every pipeline's stack into it (dipy, matplotlib, ...):
measured ~10 CPU s per worker process of an ephemeral cluster, for modules its tasks never use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from consumers.pipelines.base import Pipeline
from shared.errors import InvalidInput

if TYPE_CHECKING:
    PIPELINES: dict[str, Pipeline]


@functools.cache
def _registry() -> dict[str, Pipeline]:
    from consumers.pipelines import dti, microstructure, tractography

    return {
        "dti": Pipeline(
            load=dti.load,
            run=dti.run,
            worker_modules=("consumers.pipelines.dti", "dipy.reconst.dti"),
        ),
        "tractography": Pipeline(
            load=tractography.load,
            run=tractography.run,
            worker_modules=(
                "consumers.pipelines.tractography",
                "dipy.reconst.dti",
                "dipy.reconst.csdeconv",
                "dipy.tracking.tracker",
                "dipy.tracking.stopping_criterion",
                "dipy.io.streamline",
            ),
        ),
        "microstructure": Pipeline(
            load=microstructure.load,
            run=microstructure.run,
            # What the workers' tasks use, nothing more: itk_objectness loads ITK's wrappers and
            # sets one ITK thread per worker process; the label graph is dask-image's.
            worker_modules=(
                "consumers.pipelines.itk_objectness",
                "consumers.pipelines.ngff",
                "consumers.pipelines.fiberstats",
                "dask_image.ndmeasure",
            ),
        ),
    }


def __getattr__(name: str) -> Any:
    if name == "PIPELINES":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_pipeline(name: str) -> Pipeline:
    """The named pipeline; an unknown name is a permanent ``InvalidInput``."""
    try:
        return _registry()[name]
    except KeyError:
        raise InvalidInput(f"unknown pipeline {name!r}") from None


__all__ = ["PIPELINES", "Pipeline", "get_pipeline"]
