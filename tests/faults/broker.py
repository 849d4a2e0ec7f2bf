"""Talking to the broker the way a hostile or buggy client would: past our producer."""

from __future__ import annotations

import uuid
from typing import Any

from consumers.app import make_app
from shared.jobspec import TASK_NAME
from shared.settings import Settings


def raw_task(settings: Settings, body: object, **options: Any) -> str:
    """Publish a task message whose body skipped our producer's validation; returns its id."""
    job_id = uuid.uuid4().hex
    app = make_app(settings)
    try:
        app.send_task(TASK_NAME, args=[body], task_id=job_id, **options)
    finally:
        app.close()
    return job_id
