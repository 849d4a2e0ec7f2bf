"""The pipeline registry: name -> ``Pipeline(load, run, worker_modules, check)``.

A pipeline is a module with ``load``, ``run``, optionally ``check``, and ``WORKER_MODULES``: the
modules its Dask workers import while the cluster starts (the ones holding its task functions
and the stack they use, nothing else). Adding one: write the module, add its parameters model
to ``shared.params.PIPELINE_PARAMS`` (the producer validates jobs without importing consumers)
and its name here; ``tests/pipelines/test_registry.py`` fails until the three agree.

Lazy on purpose: every ``consumers.pipelines.X`` import runs this file first, and Dask workers
import the leaf modules their tasks live in. Importing every pipeline here would load
matplotlib, zarr and ITK into each dipy worker (~5 CPU s per worker process, charged to
every job on an ephemeral cluster). A pipeline's module is imported when the consumer first
asks for it. The science subpackages' ``__init__`` files stay empty for the same reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from functools import cache

from consumers.pipelines.base import Pipeline
from shared.errors import InvalidInput

#: name -> the module that is the pipeline.
MODULES: dict[str, str] = {
    "dti": "consumers.pipelines.diffusion.dti",
    "tractography": "consumers.pipelines.diffusion.tractography",
    "bundles": "consumers.pipelines.bundles.pipeline",
    "profiles": "consumers.pipelines.bundles.tractometry",
    "microstructure": "consumers.pipelines.microstructure.pipeline",
}


@cache
def _load(name: str) -> Pipeline:
    module = importlib.import_module(MODULES[name])
    return Pipeline(
        load=module.load,
        run=module.run,
        worker_modules=tuple(module.WORKER_MODULES),
        check=getattr(module, "check", None),
    )


class _Registry(Mapping[str, Pipeline]):
    def __getitem__(self, name: str) -> Pipeline:
        if name not in MODULES:
            raise KeyError(name)
        return _load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


PIPELINES: Mapping[str, Pipeline] = _Registry()


def get_pipeline(name: str) -> Pipeline:
    """The named pipeline; an unknown name is a permanent ``InvalidInput``."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise InvalidInput(f"unknown pipeline {name!r}") from None


__all__ = ["MODULES", "PIPELINES", "Pipeline", "get_pipeline"]
