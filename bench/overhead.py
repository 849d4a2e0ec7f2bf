"""What voxfleet adds around the science: enqueue-to-manifest latency of a tiny job through a
real consumer with an ephemeral vs a warm local cluster, and the overhead share of a ``dti``
job on a medium subject.

``python -m bench overhead [--jobs=3]``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cluster
from bench.harness import write_results
from consumers.runner import execute
from producer.jobs import submit, wait_for
from producer.local_consumer import running_consumer
from producer.server import EmbeddedRedis
from producer.synth.hcp import write_subject
from shared.jobspec import JobSpec
from shared.settings import Settings
from shared.store import LocalStore

# Everything the job does that is not the pipeline's own reading, computing and writing.
OVERHEAD_STAGES = ("queue_wait", "cluster_wait", "cluster_release", "publish", "commit")


def _latencies(
    server: EmbeddedRedis, subject: Path, out: Path, *, warm: bool, jobs: int
) -> list[float]:
    queue = "warm" if warm else "ephemeral"
    env = {
        **os.environ,
        "VOXFLEET_BROKER_URL": server.url,
        "VOXFLEET_QUEUE": queue,
        "VOXFLEET_DEFAULT_CLUSTER": "local:2",
        "VOXFLEET_KEEP_WARM": "true" if warm else "false",
    }
    settings = Settings(broker_url=server.url, queue=queue)
    seconds = []
    with running_consumer(env, out / f"{queue}.log"):
        for i in range(jobs + 1):  # the first one warms up the consumer (and the cluster)
            spec = JobSpec(
                pipeline="dti",
                input_uri=str(subject),
                results_uri=str(out / queue),
                params={"b0_threshold": 10 + i},  # a new key each time: a real job
                campaign="bench",
            )
            t0 = time.perf_counter()
            submit([spec], settings)
            record = wait_for([spec.job_id], settings, timeout_s=300, poll_s=0.05)[spec.job_id]
            assert record["state"] == "done", record
            if i:
                seconds.append(time.perf_counter() - t0)
    return seconds


def _overhead(timing: dict[str, Any]) -> float:
    stages = timing["stages_s"]
    return float(sum(stages.get(k, 0.0) for k in OVERHEAD_STAGES) / timing["wall_s"])


def main(options: list[str]) -> dict[str, Any]:
    jobs = int(next((o.split("=", 1)[1] for o in options if o.startswith("--jobs=")), 3))
    with tempfile.TemporaryDirectory(prefix="vf-bench-overhead-") as tmp:
        root = Path(tmp)
        write_subject(LocalStore(root / "in"), "100307", size="small", seed=1)
        write_subject(LocalStore(root / "in"), "100408", size="medium", seed=2)
        with EmbeddedRedis(root / "redis") as server:
            ephemeral = _latencies(server, root / "in" / "100307", root, warm=False, jobs=jobs)
            warm = _latencies(server, root / "in" / "100307", root, warm=True, jobs=jobs)

        medium = root / "in" / "100408"
        fresh = execute(
            JobSpec(pipeline="dti", input_uri=str(medium), results_uri=str(root / "m1"),
                    cluster="local:2"),
            Settings(),
        )  # fmt: skip
        pool = cluster.WarmPool(idle_s=120)
        kept = []
        for b0 in (40, 50):
            kept.append(
                execute(
                    JobSpec(
                        pipeline="dti",
                        input_uri=str(medium),
                        results_uri=str(root / "m2"),
                        cluster="local:2",
                        campaign="bench",
                        params={"b0_threshold": b0},
                    ),
                    Settings(),
                    pool=pool,
                )
            )
        pool.close()

    eph, hot = statistics.median(ephemeral), statistics.median(warm)
    figures = {
        "tiny_job_latency_s_ephemeral": round(eph, 3),
        "tiny_job_latency_s_warm": round(hot, 3),
        "warm_vs_ephemeral": round(hot / eph, 3),
        "overhead_fraction_dti": round(_overhead(fresh.timing), 3),
        "overhead_fraction_dti_warm": round(_overhead(kept[1].timing), 3),
        "latencies_s": {"ephemeral": ephemeral, "warm": warm},
        "dti_medium_stages_s": {
            "ephemeral": fresh.timing["stages_s"],
            "warm": kept[1].timing["stages_s"],
        },
        "overhead_stages": list(OVERHEAD_STAGES),
    }
    write_results("overhead", figures)
    return figures
