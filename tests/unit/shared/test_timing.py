from __future__ import annotations

import time

import pytest

from shared.errors import Cancelled, TimeLimitExceeded
from shared.timing import StageTimer


def test_stages_accumulate_in_order() -> None:
    timer = StageTimer()
    with timer.stage("load"):
        pass
    timer.record("tracking", 1.5)
    timer.record("tracking", 0.5)
    assert list(timer.stages) == ["load", "tracking"]
    assert timer.stages["tracking"] == pytest.approx(2.0)
    assert timer.as_dict()["stages_s"]["tracking"] == pytest.approx(2.0)


def test_stage_time_recorded_even_when_it_raises() -> None:
    timer = StageTimer()
    with pytest.raises(ValueError), timer.stage("boom"):
        raise ValueError
    assert "boom" in timer.stages


def test_deadline_and_check_stop_at_a_boundary() -> None:
    with (
        pytest.raises(TimeLimitExceeded, match="csd"),
        StageTimer(deadline=time.time() - 1).stage("csd"),
    ):
        pass

    def cancelled(stage: str) -> None:
        raise Cancelled(f"campaign cancelled before {stage}")

    with pytest.raises(Cancelled, match="tracking"):
        StageTimer(check=cancelled).boundary("tracking")


def test_each_stage_has_its_own_cpu_and_memory_peak() -> None:
    import numpy as np

    timer = StageTimer()
    with timer.stage("big"):
        block = np.ones(40_000_000)  # 305 MiB, touched
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
    del block
    with timer.stage("small"):
        pass
    timing = timer.as_dict()
    peaks = timing["stages_peak_rss_mib"]
    # The peak of "small" starts afresh: the freed block is not counted again.
    assert peaks["big"] > peaks["small"] + 250
    assert timing["stages_cpu_s"]["big"] >= 0.2 > timing["stages_cpu_s"]["small"]
    assert timing["peak_rss_mib"]["consumer"] == peaks["big"]
    assert timing["peak_rss_mib"]["workers"] is None  # no cluster in this job
