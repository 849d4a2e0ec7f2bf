"""The pipeline registry: name -> ``Pipeline(load, run)``. Imported once by the consumer."""

from __future__ import annotations

from consumers.pipelines import bundles, dti, microstructure, tractography
from consumers.pipelines.base import Pipeline
from shared.errors import InvalidInput

PIPELINES: dict[str, Pipeline] = {
    "dti": Pipeline(
        load=dti.load,
        run=dti.run,
        worker_modules=("consumers.pipelines.dti", "dipy.reconst.dti"),
        check=dti.check,
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
        check=tractography.check,
    ),
    "bundles": Pipeline(
        load=bundles.load,
        run=bundles.run,
        check=bundles.check,
        worker_modules=(
            "consumers.pipelines.recognition",
            "dipy.segment.bundles",
            "dipy.align.streamlinear",
        ),
    ),
    "microstructure": Pipeline(
        load=microstructure.load,
        run=microstructure.run,
        # itk_objectness loads ITK's wrappers and sets one ITK thread per worker process.
        worker_modules=(
            "consumers.pipelines.microstructure",
            "consumers.pipelines.itk_objectness",
            "dask_image.ndmeasure",
        ),
        check=microstructure.check,
    ),
}


def get_pipeline(name: str) -> Pipeline:
    """The named pipeline; an unknown name is a permanent ``InvalidInput``."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise InvalidInput(f"unknown pipeline {name!r}") from None


__all__ = ["PIPELINES", "Pipeline", "get_pipeline"]
