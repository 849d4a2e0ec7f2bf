"""A stand-in for the ``coiled`` package, for tests of voxfleet's side of the boundary only.

``Cluster(**kwargs)`` records its arguments and its close (to the JSON-lines file named by
``VOXFLEET_TEST_COILED_LOG``, so a consumer subprocess can report them too) and runs a real
LocalCluster underneath, so jobs really execute. Nothing here talks to Coiled's service.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from distributed import LocalCluster

EVENTS: list[dict[str, Any]] = []


def _record(event: dict[str, Any]) -> None:
    EVENTS.append(event)
    path = os.environ.get("VOXFLEET_TEST_COILED_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(event, default=str) + "\n")


class Cluster(LocalCluster):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        _record({"event": "create", "kwargs": kwargs, "pid": os.getpid(), "at": time.time()})
        self.cluster_id = 4242
        super().__init__(
            n_workers=min(int(kwargs.get("n_workers", 1)), 2),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        )

    def close(self, *args: Any, **kwargs: Any) -> Any:
        _record({"event": "close", "pid": os.getpid(), "at": time.time()})
        return super().close(*args, **kwargs)
