"""Collecting cluster tasks (``consumers.pipelines.remote``) on a real multi-process cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest
from distributed import Client

from consumers.pipelines.remote import gather_all


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
