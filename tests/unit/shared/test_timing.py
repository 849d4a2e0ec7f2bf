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
