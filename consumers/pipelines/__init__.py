"""The pipeline registry: name -> ``Pipeline(load, run)``.

Lazy on purpose: every ``consumers.pipelines.X`` import runs this file first, and Dask workers
import the leaf modules their tasks live in (``csd``, ``tracking``, ...). Importing every
pipeline here would load matplotlib, zarr and dask-image into each dipy worker (~5 CPU s per
worker process, charged to every job on an ephemeral cluster). A pipeline's module is imported
when the consumer first asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from functools import cache

from consumers.pipelines.base import Pipeline
from shared.errors import InvalidInput

#: name -> (module with ``load``, ``run`` and optionally ``check``; modules its workers import
#: while the cluster starts: the ones holding its task functions and the stack they use, nothing
#: else).
_ENTRIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dti": ("consumers.pipelines.dti", ("consumers.pipelines.dti", "dipy.reconst.dti")),
    "tractography": (
        "consumers.pipelines.tractography",
        (
            "consumers.pipelines.dti",
            "consumers.pipelines.csd",
            "consumers.pipelines.tracking",
            "dipy.reconst.dti",
        ),
    ),
    "bundles": (
        "consumers.pipelines.bundles",
        ("consumers.pipelines.recognition", "dipy.segment.bundles", "dipy.align.streamlinear"),
    ),
    "microstructure": (
        "consumers.pipelines.microstructure",
        # itk_objectness loads ITK's wrappers and sets one ITK thread per worker process; the
        # label graph is dask-image's.
        (
            "consumers.pipelines.itk_objectness",
            "consumers.pipelines.ngff",
            "consumers.pipelines.fiberstats",
            "dask_image.ndmeasure",
        ),
    ),
}


@cache
def _load(name: str) -> Pipeline:
    module_name, worker_modules = _ENTRIES[name]
    module = importlib.import_module(module_name)
    return Pipeline(
        load=module.load,
        run=module.run,
        worker_modules=worker_modules,
        check=getattr(module, "check", None),
    )


class _Registry(Mapping[str, Pipeline]):
    def __getitem__(self, name: str) -> Pipeline:
        if name not in _ENTRIES:
            raise KeyError(name)
        return _load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_ENTRIES)

    def __len__(self) -> int:
        return len(_ENTRIES)


PIPELINES: Mapping[str, Pipeline] = _Registry()


def get_pipeline(name: str) -> Pipeline:
    """The named pipeline; an unknown name is a permanent ``InvalidInput``."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise InvalidInput(f"unknown pipeline {name!r}") from None


__all__ = ["PIPELINES", "Pipeline", "get_pipeline"]
