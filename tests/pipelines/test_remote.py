"""Collecting cluster tasks (``consumers.pipelines.fanout``) on a real multi-process cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest
from distributed import Client

from consumers.pipelines.fanout import gather_all


def test_results_are_awaited_on_the_jobs_own_client_loop(dask_client: Any) -> None:
    """With a second Client in the process (the default one, being the newest), the futures are
    still tracked on the job client's loop. On the other's, a result lost with its worker and
    re-gathered through the job's client failed with "bound to a different event loop"
    (CI, tests/integration/test_worker_loss.py) instead of being recomputed."""
    with Client(dask_client.scheduler.address, timeout=30) as other:
        assert other.loop is not dask_client.loop  # the situation being tested
        futures = [dask_client.submit(time.sleep, 0.3, pure=False) for _ in range(2)]
        assert gather_all(dask_client, futures, ["a", "b"]) == [None, None]
        for future in futures:
            # What Client._gather does with a key it could not fetch: reset, then wait again.
            future._state.reset()
            with pytest.raises(TimeoutError):
                dask_client.sync(future._state.wait, timeout=0.2)


def _nap(seconds: float, shared: int) -> tuple[str, float]:
    from distributed import get_worker

    time.sleep(seconds)
    return get_worker().address, seconds + shared


def test_parts_sent_with_their_tasks_go_to_whichever_worker_is_free(dask_client: Any) -> None:
    """One long task and six short ones on two workers. Scattered, the parts are placed
    round-robin before anything runs and the long task's worker gets three short ones as well
    (seen here: 3). Sent inside their tasks, they are queued by the scheduler, so the long
    task's worker takes at most the one short task it was handed beside it (Dask gives a
    one-thread worker two task slots)."""
    from consumers.pipelines.fanout import map_scattered

    parts = [1.5] + [0.2] * 6
    results = map_scattered(
        dask_client, _nap, parts, labels=[f"nap {i}" for i in range(len(parts))],
        shared=[0], scatter_parts=False,
    )  # fmt: skip
    assert [r[1] for r in results] == parts  # every part, in order
    long_worker = results[0][0]
    assert sum(1 for address, _ in results[1:] if address == long_worker) <= 1


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
    from consumers.pipelines.fanout import TaskFailed, map_scattered
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
