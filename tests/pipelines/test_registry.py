"""A pipeline is named in three places; they must agree."""

from __future__ import annotations

import importlib
import importlib.util
from typing import get_args

import pytest

from consumers.pipelines import MODULES, PIPELINES
from shared.params import PIPELINE_PARAMS, PipelineName


def test_the_registry_the_parameters_and_the_jobspec_literal_name_the_same_pipelines() -> None:
    assert set(MODULES) == set(PIPELINE_PARAMS) == set(get_args(PipelineName))
    assert list(PIPELINES) == list(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_pipeline_declares_worker_modules_that_exist(name: str) -> None:
    module = importlib.import_module(MODULES[name])
    assert callable(module.load) and callable(module.run)
    declared = module.WORKER_MODULES
    assert declared and len(set(declared)) == len(declared)
    for worker_module in declared:
        assert importlib.util.find_spec(worker_module) is not None, worker_module
    assert PIPELINES[name].worker_modules == tuple(declared)
