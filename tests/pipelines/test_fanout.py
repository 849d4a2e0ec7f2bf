"""Fanning tasks out (``consumers.pipelines.fanout``) on a real multi-process cluster."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from distributed import Client

from consumers.pipelines.fanout import (
    Measured,
    TaskStats,
    collect,
    completed,
    map_scattered,
    part_count,
    record_tasks,
)
from shared.timing import StageTimer


def test_results_are_awaited_on_the_jobs_own_client_loop(dask_client: Any) -> None:
    """With a second Client in the process (the default one, being the newest), the futures are
    still tracked on the job client's loop. On the other's, a result lost with its worker and
    re-gathered through the job's client failed with "bound to a different event loop"
    (CI, tests/integration/test_worker_loss.py) instead of being recomputed."""
    with Client(dask_client.scheduler.address, timeout=30) as other:
        assert other.loop is not dask_client.loop  # the situation being tested
        futures = [dask_client.submit(time.sleep, 0.3, pure=False) for _ in range(2)]
        assert {f.result() for f in completed(dask_client, futures)} == {None}
        for future in futures:
            # What Client._gather does with a key it could not fetch: reset, then wait again.
            future._state.reset()
            with pytest.raises(TimeoutError):
                dask_client.sync(future._state.wait, timeout=0.2)


def _nap(seconds: float, shared: int) -> float:
    time.sleep(seconds)
    return seconds + shared


def test_parts_sent_with_their_tasks_go_to_whichever_worker_is_free(dask_client: Any) -> None:
    """One long task and six short ones on two workers. Scattered, the parts are placed
    round-robin before anything runs and the long task's worker gets three short ones as well
    (seen here: 3). Sent inside their tasks, they are queued by the scheduler, so the long
    task's worker takes at most the one short task it was handed beside it (Dask gives a
    one-thread worker two task slots)."""
    parts = [1.5] + [0.2] * 6
    results = map_scattered(
        dask_client, _nap, parts, labels=[f"nap {i}" for i in range(len(parts))],
        shared=[0], scatter_parts=False,
    )  # fmt: skip
    assert results == parts  # every part, in order
    long_worker = results.stats[0].worker
    assert sum(1 for task in results.stats[1:] if task.worker == long_worker) <= 1


def _count_and_raise(part: int, tally: str, error: str) -> int:
    import uuid
    from pathlib import Path

    from shared.errors import InvalidInput

    (Path(tally) / uuid.uuid4().hex).touch()  # every try, on whichever worker
    if part == 1:
        raise {"ValueError": ValueError, "InvalidInput": InvalidInput, "OSError": OSError}[error](
            "bad voxel"
        )
    return part


@pytest.mark.parametrize(
    ("error", "tries", "expected"),
    [("ValueError", 1, "TaskFailed"), ("InvalidInput", 1, "InvalidInput"), ("OSError", 3, "")],
)
def test_deterministic_errors_are_not_rerun(
    dask_client: Any, tmp_path: Any, error: str, tries: int, expected: str
) -> None:
    """A task that raises a deterministic error runs once and fails the stage at once, keeping
    our own error's class; an I/O error is rerun (twice) on the cluster before it fails."""
    from consumers.pipelines.fanout import TaskFailed
    from shared.errors import InvalidInput, TransientError

    tally = tmp_path / "tries"
    tally.mkdir()
    kind = {"TaskFailed": TaskFailed, "InvalidInput": InvalidInput, "": TransientError}[expected]
    with pytest.raises(kind, match="part 1") as caught:
        map_scattered(
            dask_client, _count_and_raise, [0, 1, 2], str(tally), error,
            labels=["part 0", "part 1", "part 2"],
        )  # fmt: skip
    assert "bad voxel" in str(caught.value)
    failing = len(list(tally.iterdir())) - 2  # the two good parts ran once each (or not yet)
    assert failing <= tries and (tries == 1 or failing >= tries - 1)


def _burn(seconds: float) -> int:
    """Busy for ``seconds`` of CPU (not sleeping): the stats must see CPU, not just wall."""
    t0, total = time.process_time(), 0
    while time.process_time() - t0 < seconds:
        total += sum(range(1000))
    return total


def test_every_task_reports_its_worker_wall_and_cpu_seconds(dask_client: Any) -> None:
    results = map_scattered(dask_client, _burn, [0.3, 0.0], labels=["a", "b"])
    workers = set(dask_client.scheduler_info(n_workers=-1)["workers"])
    assert len(results) == len(results.stats) == 2
    burnt, idle = results.stats
    assert {burnt.worker, idle.worker} <= workers
    assert burnt.cpu_s >= 0.3 and burnt.busy_s >= 0.25  # other threads' CPU counts, not wall
    assert idle.cpu_s < burnt.cpu_s  # process CPU: the worker's other threads count too


def test_record_tasks_sums_per_worker_and_accumulates_over_calls() -> None:
    timer = StageTimer()
    record_tasks(timer, "fit", [TaskStats("w1", 2.0, 1.5), TaskStats("w2", 1.0, 1.0)])
    record_tasks(timer, "fit", [TaskStats("w1", 0.5, 0.5)])
    assert timer.extra["fit_workers_busy_s"] == {"w1": 2.5, "w2": 1.0}
    assert timer.extra["fit_workers_cpu_s"] == {"w1": 2.0, "w2": 1.0}
    assert timer.extra["fit_tasks"] == 3
    assert timer.as_dict()["fit_tasks"] == 3  # what timing.json gets


def test_part_count_is_as_asked_else_a_few_per_worker_and_never_empty() -> None:
    assert part_count(None, 4, 3, 1000) == 12
    assert part_count(7, 4, 3, 1000) == 7
    assert part_count(None, 4, 3, 5) == 5  # no part without an item
    assert part_count(None, 4, 0, 1000) == 4  # no worker up yet: as if one


def _double(block: Any, block_info: dict[Any, Any] | None = None) -> Any:
    assert block_info is not None  # dask passes it through Measured
    return block * 2


def test_tasks_dask_builds_report_through_their_workers_log(dask_client: Any) -> None:
    import dask.array as da

    array = da.ones((40, 10), chunks=(10, 10))
    doubled = array.map_blocks(Measured(_double, "test-log"), dtype=array.dtype)
    assert float(dask_client.compute(doubled.sum()).result()) == 800.0
    stats = collect(dask_client, "test-log")
    assert len(stats) == 4 and all(isinstance(task, TaskStats) for task in stats)
    workers = set(dask_client.scheduler_info(n_workers=-1)["workers"])
    assert {task.worker for task in stats} <= workers
    assert collect(dask_client, "test-log") == []  # taken, not copied
    assert np.all(np.asarray(doubled.compute(scheduler="sync")) == 2.0)  # and locally too
