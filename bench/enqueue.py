"""Bulk enqueue vs a plain ``apply_async`` loop vs raw pipelined LPUSH, one server, one run.

``python -m bench enqueue [--jobs=100000]``. The ``apply_async`` loop is timed on a slice
(it is ~100x slower) and reported as a rate.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from bench.harness import write_results
from consumers.app import make_app
from producer.bulk import BATCH, envelope, publish_bulk
from producer.server import EmbeddedRedis
from shared.jobspec import TASK_NAME, JobSpec
from shared.settings import Settings


def _specs(n: int, campaign: str) -> list[JobSpec]:
    return [
        JobSpec(
            pipeline="dti",
            input_uri=f"s3://hcp-openaccess/HCP_1200/{100000 + i}",
            results_uri="s3://lab/derivatives",
            campaign=campaign,
        )
        for i in range(n)
    ]


def main(options: list[str]) -> dict[str, Any]:
    jobs = int(next((o.split("=", 1)[1] for o in options if o.startswith("--jobs=")), 100_000))
    slice_n = max(1000, jobs // 20)
    with EmbeddedRedis() as server:
        settings = Settings(broker_url=server.url)
        client = redis.Redis.from_url(server.url)

        t0 = time.perf_counter()
        specs = _specs(jobs, "bench")
        validate_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        publish_bulk(specs, settings, campaign="bench", queue="ours")
        ours_s = time.perf_counter() - t0
        assert client.llen("ours") == jobs

        payloads = [envelope(s, "raw") for s in specs]
        client.flushall()
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i, payload in enumerate(payloads, start=1):
            pipe.lpush("raw", payload)
            if i % BATCH == 0:
                pipe.execute()
        pipe.execute()
        raw_s = time.perf_counter() - t0
        assert client.llen("raw") == jobs

        app = make_app(settings)
        few = _specs(slice_n, "apply")
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for spec in few:
                app.send_task(
                    TASK_NAME,
                    args=[spec.to_message()],
                    task_id=spec.job_id,
                    queue="apply",
                    producer=producer,
                )
        apply_s = time.perf_counter() - t0
        app.close()
        assert client.llen("apply") == slice_n

    ours_rate, raw_rate, apply_rate = jobs / ours_s, jobs / raw_s, slice_n / apply_s
    figures = {
        "jobs": jobs,
        "jobs_per_s": round(ours_rate),
        "seconds_for_all": round(ours_s, 3),
        "ratio_vs_apply_async": round(ours_rate / apply_rate, 2),
        "ratio_vs_raw_lpush": round(ours_rate / raw_rate, 3),
        "apply_async_jobs_per_s": round(apply_rate),
        "apply_async_measured_on": slice_n,
        "raw_lpush_jobs_per_s": round(raw_rate),
        "validate_jobs_per_s": round(jobs / validate_s),
        "message_bytes": len(payloads[0]),
    }
    write_results("enqueue", figures)
    return figures
