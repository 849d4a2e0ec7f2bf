"""The ``microstructure`` job at growing sizes, up to a volume far larger than a worker's memory
(issue #19): for each side (128^3 ... 1024^3 uint16 fiber phantoms, seed 11, volume fraction
0.25; 1024^3 is 2 GiB, ~1 G voxels), one job end to end through the queue: a private
Redis-protocol server, one fresh consumer (``voxfleet worker --max-jobs=1``, so it exits after
the job) whose local cluster's workers are each limited to ``--memory-limit``
(``VOXFLEET_LOCAL_MEMORY_LIMIT``), the job enqueued with ``cluster=local:2`` and waited for
through its record in the broker.

What is counted, per size:

- ``wall_s``: enqueue to the job's record saying ``done``.
- ``cpu_s``: user + system CPU of every process of the consumer's tree, after it exits:
  ``os.wait4`` on the consumer gives its own CPU and that of every child it reaped. Its local
  cluster's workers are not its children: they are forked by a multiprocessing forkserver
  (a child of the consumer), which reaps them, and which the consumer never waits for; at the
  consumer's exit the forkserver (and the resource tracker) are orphaned. This process makes
  itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so those orphans become its own
  children: they are reaped here with ``os.wait4`` too, each with its reaped children (the
  workers). So every process of the tree is counted once, whole. ``cpu_s_sampled`` is the sum
  of each process's own CPU at its last memory sample (``bench.memory.PeakPss``): a lower
  bound, a cross-check of the above.
- ``startup_cpu_s``: the tree's CPU when the consumer was ready to take the job, before it was
  enqueued (interpreter start, imports, connecting): a per-consumer constant, left out of
  ``job_cpu_s`` = ``cpu_s`` - ``startup_cpu_s`` and of ``cpu_per_mvoxel`` (= ``job_cpu_s`` per
  million voxels of the volume). The job's own fixed costs (the forkserver importing the
  pipeline's stack, starting the cluster, ~10 CPU s) stay in: they weigh on the small sizes,
  and ``fit`` (least squares, CPU = fixed + per Mvoxel x Mvoxels) separates them.
- ``peak_pss_mib``: the largest total PSS of the consumer's tree at one sample (shared pages
  counted once, every second); ``processes``: each process's own peak PSS and CPU;
  ``worker_peak_pss_mib``: the largest of the Dask workers', against ``memory_limit_mib``.
- ``stages_s`` and ``cluster``: the job's own timing record (the runner's ``StageTimer``, as
  the broker's job record has it: ``timing.json`` plus the commit).

``linearity``: ``cpu_per_mvoxel`` of the largest size over that of 256^3 (of the smallest size
when 256 was not run, or is the largest); the issue's target is <= 1.15. The job's fixed costs
(~10-17 CPU s measured at 64^3 and 128^3) are a large share of a 256^3 job's, so this ratio
comes out below 1 even for a cost that grows a little faster than linearly; the fixed costs
drop out of ``marginal_cpu_per_mvoxel`` (each step up in size: the CPU it added per Mvoxel it
added) and ``linearity_marginal`` (the last step's over the one before: 512->1024 over
256->512 for the default sizes).

``python -m bench microstructure_scale [--sizes=128,256,512,1024] [--memory-limit=2GiB]
[--sigmas=1,2]`` (default sigmas: the pipeline's). Phantoms are cached in
``/tmp/voxfleet-bench-scale`` (writing the 1024^3 one takes a while); a partial run (fewer
sizes) writes its results file too.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import write_results
from bench.memory import PeakPss, tree

CACHE = Path("/tmp/voxfleet-bench-scale")
PR_SET_CHILD_SUBREAPER = 36
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _subreaper(on: bool) -> bool:
    """Orphaned descendants are re-parented to this process (Linux), not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)


def _tree_cpu(root: int) -> float:
    """CPU so far of ``root``'s tree: each live process's own, plus its reaped children's."""
    total = 0.0
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) * _TICK_S  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            continue
    return total


def _phantom(side: int) -> dict[str, Any]:
    """The cached phantom of this side (written first if missing), in a child process so
    this one stays small; the sidecar JSON marks it complete."""
    volume, sidecar = CACHE / f"{side}.zarr", CACHE / f"{side}.json"
    if sidecar.exists() and volume.exists():
        return {**json.loads(sidecar.read_text()), "cached": True}
    shutil.rmtree(volume, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    code = (
        "import json, sys\n"
        "from producer.synth.fibers import PhantomSpec, write_phantom\n"
        "from shared.settings import Settings\n"
        f"spec = PhantomSpec(shape=({side},) * 3, volume_fraction=0.25, seed=11)\n"
        f"p = write_phantom({str(volume)!r}, spec, Settings())\n"
        "print(json.dumps({'fibers': len(p.fibers), 'volume_fraction': p.volume_fraction}))\n"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    info = {**json.loads(out.stdout.strip().splitlines()[-1])}
    info["write_wall_s"] = round(time.perf_counter() - t0, 1)
    sidecar.write_text(json.dumps(info))
    return {**info, "cached": False}


def _reap(pid: int, timeout_s: float) -> tuple[float, str]:
    """Wait for ``pid`` (a child of this process); its CPU with its reaped children's, and how
    it ended. Past the timeout: SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + timeout_s
    how = "exited"
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            how = f"sent {signal.Signals(sig).name}"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 30
        while time.monotonic() < deadline or sig == signal.SIGKILL:
            try:
                done, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                return 0.0, "not a child"
            if done:
                if os.WIFSIGNALED(status):
                    how += f", died of signal {os.WTERMSIG(status)}"
                elif os.WEXITSTATUS(status):
                    how += f", exit status {os.WEXITSTATUS(status)}"
                return usage.ru_utime + usage.ru_stime, how
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _orphans(seen: set[int]) -> list[int]:
    """Processes of the job (pids the sampler saw) that are now this process's children."""
    me = os.getpid()
    found = []
    for pid in seen:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(pid)
    return found


def _run_size(
    side: int, server_url: str, root: Path, memory_limit: str, params: dict[str, Any]
) -> dict[str, Any]:
    from producer.jobs import submit, wait_for
    from producer.local_consumer import wait_until_ready
    from shared.jobspec import JobSpec
    from shared.settings import Settings

    phantom = _phantom(side)
    queue = f"scale-{side}"
    name = f"scale-{side}-{uuid.uuid4().hex[:6]}"
    log_path = root / f"consumer-{side}.log"
    env = {
        **os.environ,
        "VOXFLEET_BROKER_URL": server_url,
        "VOXFLEET_QUEUE": queue,
        "VOXFLEET_LOCAL_MEMORY_LIMIT": memory_limit,
        "VOXFLEET_KEEP_WARM": "false",
    }
    settings = Settings(broker_url=server_url, queue=queue)
    with log_path.open("ab") as log:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "producer", "worker", "--max-jobs=1", f"--hostname={name}@%h"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    cpu = 0.0
    ended = "?"
    peak = PeakPss(consumer.pid, interval_s=1.0)
    try:
        with peak:
            wait_until_ready(consumer, name, server_url, log_path, timeout_s=300)
            startup_cpu = _tree_cpu(consumer.pid)
            spec = JobSpec(
                pipeline="microstructure",
                input_uri=str(CACHE / f"{side}.zarr"),
                results_uri=str(root / "results"),
                params=params,
                cluster="local:2",
                campaign="scale",
            )
            t0 = time.perf_counter()
            submit([spec], settings)
            record = wait_for([spec.job_id], settings, poll_s=0.5)[spec.job_id]
            wall = time.perf_counter() - t0
            cpu, ended = _reap(consumer.pid, timeout_s=120)  # --max-jobs=1: it stops itself
            consumer.returncode = 0  # reaped here, not by Popen
    finally:
        if consumer.returncode is None:  # an error above: stop it and its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(consumer.pid, signal.SIGKILL)
            _reap(consumer.pid, timeout_s=10)
            consumer.returncode = -9
    # The consumer's orphans (forkserver, resource tracker) are ours now, and so are theirs
    # once they exit: reap until none is left.
    seen = {p["pid"] for p in peak.processes} - {consumer.pid}
    orphans_cpu, reaped = 0.0, []
    deadline = time.monotonic() + 120
    while (left := _orphans(seen)) and time.monotonic() < deadline:
        for pid in left:
            used, how = _reap(pid, timeout_s=60)
            orphans_cpu += used
            reaped.append({"pid": pid, "cpu_s": round(used, 3), "ended": how})
    assert record.get("state") == "done", f"size {side}: {record}"

    processes = peak.processes
    mvox = side**3 / 1e6
    total_cpu = cpu + orphans_cpu
    job_cpu = total_cpu - startup_cpu
    timing = record.get("timing") or {}
    summary = record.get("summary") or {}
    workers = [p["peak_pss_mib"] for p in processes if p["command"] == "dask worker"]
    from dask.utils import parse_bytes

    return {
        "side": side,
        "voxels": side**3,
        "mvoxels": round(mvox, 3),
        "input_mib": round(side**3 * 2 / 2**20, 1),
        "wall_s": round(wall, 2),
        "cpu_s": round(total_cpu, 2),
        "startup_cpu_s": round(startup_cpu, 2),
        "job_cpu_s": round(job_cpu, 2),
        "cpu_per_mvoxel": round(job_cpu / mvox, 4),
        "cpu_per_mvoxel_with_startup": round(total_cpu / mvox, 4),
        "wall_per_mvoxel": round(wall / mvox, 4),
        "consumer_cpu_s": round(cpu, 2),
        "consumer_ended": ended,
        "orphans_reaped": reaped,
        "cpu_s_sampled": round(sum(p["cpu_s"] for p in processes), 2),
        "peak_pss_mib": round(peak.bytes / 2**20, 1),
        "worker_peak_pss_mib": max(workers, default=None),
        "memory_limit_mib": round(parse_bytes(memory_limit) / 2**20, 1),
        "processes": processes,
        "sampler_cpu_s": round(peak.cpu_s, 3),
        "stages_s": timing.get("stages_s"),
        "job_wall_s": timing.get("wall_s"),
        "cluster": timing.get("cluster"),
        "chunking": summary.get("chunking"),
        "volume_fraction": summary.get("volume_fraction"),
        "phantom": phantom,
    }


def _fit(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares job CPU = fixed + per_mvoxel x Mvoxels over the sizes run."""
    if len(rows) < 2:
        return None
    xs = [r["mvoxels"] for r in rows]
    ys = [r["job_cpu_s"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return {"fixed_cpu_s": round(my - slope * mx, 2), "cpu_per_mvoxel": round(slope, 4)}


def main(options: list[str]) -> dict[str, Any]:
    from producer.server import EmbeddedRedis

    opts = dict(o.lstrip("-").split("=", 1) for o in options if "=" in o)
    sizes = [int(s) for s in opts.get("sizes", "128,256,512,1024").split(",")]
    memory_limit = opts.get("memory-limit", "2GiB")
    params: dict[str, Any] = {}
    if "sigmas" in opts:
        params["sigmas"] = [float(s) for s in opts["sigmas"].split(",")]
    if not _subreaper(True):
        raise OSError("cannot become a child subreaper: the workers' CPU would be lost")
    figures: dict[str, Any] = {
        "sizes_run": [],
        "memory_limit": memory_limit,
        "params": params,
        "cluster": "local:2",
        "sizes": {},
    }
    t0 = time.perf_counter()
    failure: BaseException | None = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="vf-bench-scale-") as tmp,
            EmbeddedRedis(Path(tmp) / "redis") as server,
        ):
            for side in sizes:
                print(f"microstructure_scale: {side}^3 ...", flush=True)
                row = _run_size(side, server.url, Path(tmp), memory_limit, params)
                figures["sizes"][str(side)] = row
                figures["sizes_run"].append(side)
                print(
                    f"  {side}^3: wall {row['wall_s']} s, job CPU {row['job_cpu_s']} s "
                    f"({row['cpu_per_mvoxel']} s/Mvox), peak {row['peak_pss_mib']} MiB, "
                    f"worker peak {row['worker_peak_pss_mib']} MiB",
                    flush=True,
                )
    except BaseException as exc:  # the sizes done so far are still worth a file
        failure = exc
        figures["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        _subreaper(False)
    rows = [figures["sizes"][str(s)] for s in sorted(figures["sizes_run"])]
    if rows:
        largest = rows[-1]
        base = figures["sizes"].get("256") if largest["side"] != 256 else None
        base = base or rows[0]
        figures["linearity"] = round(largest["cpu_per_mvoxel"] / base["cpu_per_mvoxel"], 4)
        figures["linearity_sizes"] = [base["side"], largest["side"]]
        figures["fit"] = _fit(rows)
        # What each step up in size added, per Mvoxel added: free of the fixed costs.
        marginal = {
            f"{a['side']}-{b['side']}": round(
                (b["job_cpu_s"] - a["job_cpu_s"]) / (b["mvoxels"] - a["mvoxels"]), 4
            )
            for a, b in itertools.pairwise(rows)
        }
        figures["marginal_cpu_per_mvoxel"] = marginal
        steps = list(marginal.values())
        if len(steps) >= 2 and steps[-2] > 0:
            figures["linearity_marginal"] = round(steps[-1] / steps[-2], 4)
        figures["largest"] = largest["side"]
        figures["max_worker_peak_pss_mib"] = max(
            (r["worker_peak_pss_mib"] or 0 for r in rows), default=None
        )
        figures["total_wall_s"] = round(time.perf_counter() - t0, 1)
        figures["note"] = (
            "cpu_per_mvoxel: every process of the job (consumer, forkserver, workers) from "
            "enqueue to the consumer's exit, the consumer's own start-up left out; see "
            "bench/microstructure_scale.py"
        )
        write_results("microstructure_scale", figures)
    if failure is not None:
        raise failure
    return figures
