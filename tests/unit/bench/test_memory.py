"""``bench.memory.PeakPss``: the tree's peak and, per process, its own peak and CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import memory
from bench.memory import PeakPss, short_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Burns ~0.5 CPU s, then holds 200 MB of written pages (zeros from calloc would not count).
CHILD = """
import time
t0 = time.process_time()
while time.process_time() - t0 < 0.5:
    pass
block = b"\\x01" * (200 * 2**20)
time.sleep(3)
"""


def test_a_child_process_is_seen_with_its_peak_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # In the whole suite the tree is large (its servers and clusters: a sample costs tens of
    # ms) and the sampler would space its samples seconds apart to stay under 1% of a core.
    monkeypatch.setattr(memory, "MAX_OVERHEAD", 1.0)
    with PeakPss(os.getpid(), interval_s=0.05) as peak:
        subprocess.run([sys.executable, "-c", CHILD], check=True)
    child = [p for p in peak.processes if p["ppid"] == os.getpid() and p["command"] == "python -c"]
    assert len(child) == 1, peak.processes
    assert child[0]["peak_pss_mib"] >= 190
    assert 0.4 <= child[0]["cpu_s"] <= 5
    assert peak.bytes >= 200 * 2**20  # the tree's total has it too
    ours = next(p for p in peak.processes if p["pid"] == os.getpid())
    assert ours["peak_pss_mib"] > 0 and ours["cpu_s"] > 0


def test_commands_are_shortened() -> None:
    python = "/venv/bin/python3.11"
    assert short_command([python, "-m", "producer", "worker", "--max-jobs=1"]) == "voxfleet worker"
    forkserver = "from multiprocessing.forkserver import main; main(3, 4, [], **{})"
    assert short_command([python, "-X", "dev", "-c", forkserver]) == "forkserver"
    assert short_command(["/usr/bin/redis-server", "127.0.0.1:6379"]) == "redis-server"
    assert short_command([]) == "?"
