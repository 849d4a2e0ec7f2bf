"""Fanning a stage's parts out over the cluster, with no silent loss and one account of cost.

Every pipeline's parallel stage goes through here: ``worker_count`` and ``part_count`` decide
how many parts, ``map_scattered`` runs them and returns every result in submission order or
raises (a job either accounts for every chunk and shard or fails, never publishes a partial
result), and every task reports one ``TaskStats`` (the worker, wall and CPU seconds), which
``record_tasks`` writes to the job's ``timing.json`` as ``{stage}_workers_busy_s``,
``{stage}_workers_cpu_s`` and ``{stage}_tasks``, with the same meaning in every pipeline. Tasks
dask builds itself (``map_blocks``) report theirs through ``Measured`` and ``collect``.

Every task is submitted with a few immediate retries (Dask reruns a task that raised, on any
worker).

What the job-level failure is decides whether the consumer retries the whole job later:

* a ``VoxfleetError`` raised in the task (the store's ``TransientError`` for an S3 outage that
  outlasted botocore's and Dask's retries, ``PermanentStoreError`` for a refused write) keeps
  its class, so the consumer treats it as it treats the same error anywhere else;
* workers dying under the task (``KilledWorker``) or lost connections are a ``ClusterError``
  (transient): a fresh cluster on a later attempt may well succeed, and the consumer's retry
  budget bounds the cost if the task itself is what kills them (memory);
* anything else (a ValueError from dipy, a bug) is deterministic: the same code on the same
  data will raise again, so neither Dask's immediate reruns nor a whole-job retry hours later
  would do anything but repeat it. ``map_scattered`` therefore returns such an error from the
  task as a value (Dask reruns only what raises) and fails the job at once with
  ``TaskFailed``, a permanent error; only the transient kinds (``RERUN``) are rerun.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import ClusterError, TransientError, VoxfleetError
from shared.timing import StageTimer

log = logging.getLogger(__name__)

TASK_RETRIES = 2  # immediate reruns of a task that raised, before the job gives up on it
# What a rerun on another worker may cure: I/O and connections, a full disk, a worker that was
# short of memory, our own transient errors (an S3 outage). Everything else is deterministic.
RERUN: tuple[type[BaseException], ...] = (OSError, TimeoutError, MemoryError, TransientError)


class TaskFailed(VoxfleetError):
    """Permanent: a cluster task failed deterministically (see the module docstring)."""


@dataclass(frozen=True)
class Refused:
    """A task's deterministic error, returned instead of raised so that Dask does not rerun it;
    the error itself only where it is ours (it pickles, and its class decides the retry)."""

    kind: str
    message: str
    error: VoxfleetError | None = None


@dataclass(frozen=True)
class TaskStats:
    """What one task cost, measured on the worker that ran it.

    ``cpu_s`` is the worker process's CPU time while the task ran: the task's own, plus any
    threads compiled code started for it (BLAS, ITK; one each on our clusters). With one task
    thread per worker, the default, that is the task's CPU; with more, tasks running at once
    on one worker share each other's. ``busy_s`` well above ``cpu_s`` means the task waited:
    for a core, for the store.
    """

    worker: str  # the worker's address; "local" outside a cluster
    busy_s: float  # wall seconds
    cpu_s: float


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:  # called outside a worker (a notebook, a test)
        return "local"


def measured(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, TaskStats]:
    """``func(*args, **kwargs)`` and what it cost."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    value = func(*args, **kwargs)
    stats = TaskStats(_worker_address(), time.perf_counter() - t0, time.process_time() - cpu0)
    return value, stats


def guarded(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs on a worker: ``func(*args, **kwargs)`` and its ``TaskStats``, with a deterministic
    error as a ``Refused`` value (its traceback goes to the worker's log) and the ``RERUN``
    kinds raised for Dask."""
    try:
        return measured(func, *args, **kwargs)
    except RERUN:
        raise
    except Exception as exc:
        log.exception("%s raised a deterministic error; not rerunning it", func.__name__)
        own = exc if isinstance(exc, VoxfleetError) else None
        return Refused(type(exc).__name__, " ".join(str(exc).split())[:500], own)


def refusal(refused: Refused, what: str) -> VoxfleetError:
    """The job-level error for task ``what`` having returned ``refused``."""
    if refused.error is not None:
        return classify(refused.error, what)
    return TaskFailed(
        f"{what} failed: {refused.kind}: {refused.message} (the same data would fail the same "
        "way again, so it was not retried)"
    )


def classify(exc: BaseException, what: str) -> VoxfleetError:
    """The job-level error for task ``what`` having failed with ``exc`` on its last try."""
    from distributed import KilledWorker

    if isinstance(exc, VoxfleetError):
        try:
            return type(exc)(f"{what}: {exc}")
        except TypeError:  # a subclass with its own constructor; keep it as it is
            return exc
    if isinstance(exc, KilledWorker):
        return ClusterError(f"{what}: the workers running it died ({exc})")
    if isinstance(exc, OSError | TimeoutError):
        # Lost connections (CommClosedError is an OSError), a full scratch disk: not the data.
        return TransientError(f"{what}: {type(exc).__name__}: {exc}")
    return TaskFailed(f"{what} failed on every try: {type(exc).__name__}: {exc}")


MAX_ROUNDS = 3  # re-scatters after lost workers before the job gives up on the stage


def completed(client: Any, futures: Sequence[Any]) -> Iterator[Any]:
    """``futures`` as they finish, watched on ``client``'s own loop. Not the default client's:
    that is whichever Client this process made last, and with two (a watcher, a shared
    cluster's) the futures' events would be bound to the other loop, so a result re-gathered
    after its worker died would fail ("bound to a different event loop") instead of being
    recomputed."""
    from distributed import as_completed

    return iter(as_completed(futures, loop=client.loop))


def worker_count(client: Any) -> int:
    """Workers on the cluster now (at least 1: an adaptive cluster may have none yet)."""
    # n_workers=-1: all of them (the default has been capped at a few in some releases).
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def part_count(requested: int | None, per_worker: int, n_workers: int, n_items: int) -> int:
    """How many parts to cut ``n_items`` into: as requested, else ``per_worker`` per worker (a
    few each lets a fast worker take over a slow one's share); never more than there are items
    (an empty part would be a task with nothing to do)."""
    wanted = requested if requested is not None else per_worker * max(1, n_workers)
    return max(1, min(wanted, n_items))


class Results(list[Any]):
    """``map_scattered``'s results in submission order, and what each of their tasks cost."""

    def __init__(self, values: Iterable[Any], stats: Iterable[TaskStats]) -> None:
        super().__init__(values)
        self.stats = list(stats)


def record_tasks(timer: StageTimer, stage: str, stats: Iterable[TaskStats]) -> None:
    """Add ``stats`` to ``timer`` (and so to ``timing.json``) as per-worker sums:
    ``{stage}_workers_busy_s``, ``{stage}_workers_cpu_s``, and the count ``{stage}_tasks``."""
    busy = dict(timer.extra.get(f"{stage}_workers_busy_s", {}))
    cpu = dict(timer.extra.get(f"{stage}_workers_cpu_s", {}))
    count = int(timer.extra.get(f"{stage}_tasks", 0))
    for task in stats:
        busy[task.worker] = busy.get(task.worker, 0.0) + task.busy_s
        cpu[task.worker] = cpu.get(task.worker, 0.0) + task.cpu_s
        count += 1
    timer.extra[f"{stage}_workers_busy_s"] = {k: round(v, 6) for k, v in sorted(busy.items())}
    timer.extra[f"{stage}_workers_cpu_s"] = {k: round(v, 6) for k, v in sorted(cpu.items())}
    timer.extra[f"{stage}_tasks"] = count


#: Per worker process: the ``TaskStats`` of ``Measured`` tasks, by log name, until collected.
_LOGS: dict[str, list[TaskStats]] = {}


class Measured:
    """A task function for graphs dask builds itself (``map_blocks``), where a task cannot
    return its stats beside its value: it keeps them in its worker's log ``name`` instead, for
    ``collect``. Picklable by reference; ``inspect.signature`` sees ``func``'s (through
    ``__wrapped__``), so dask still passes ``block_info`` to a function that takes it."""

    def __init__(self, func: Callable[..., Any], name: str) -> None:
        self.func = func
        self.name = name
        self.__wrapped__ = func
        self.__name__ = getattr(func, "__name__", "task")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value, stats = measured(self.func, *args, **kwargs)
        _LOGS.setdefault(self.name, []).append(stats)
        return value


def _take_log(name: str) -> list[TaskStats]:
    return _LOGS.pop(name, [])


def collect(client: Any, name: str) -> list[TaskStats]:
    """The stats every worker kept under ``name``, removed from them. A worker that died took
    its share with it: those tasks ran again elsewhere and are counted there."""
    return [task for tasks in client.run(_take_log, name).values() for task in tasks]


def map_scattered(
    client: Any,
    func: Any,
    parts: Sequence[Any],
    *args: Any,
    labels: Sequence[str],
    shared: Sequence[Any] = (),
    retries: int = TASK_RETRIES,
    scatter_parts: bool = True,
    **kwargs: Any,
) -> Results:
    """``func(part, *shared, *args, **kwargs)`` for every part on the cluster; results in order,
    with each task's ``TaskStats`` (``.stats``).

    Each part is scattered once (tasks carry a reference, not a copy); ``shared`` values (large
    arrays every task reads) are sent to every worker once per round. A worker that dies takes
    its scattered data with it -- Dask then cancels the tasks that needed them, and cannot
    recompute data it never had a recipe for. Those parts are scattered again from the
    consumer's copy, with the shared values (Dask's memory manager drops broadcast replicas it
    deems surplus, so the dead worker may have held the only copy), and their tasks resubmitted,
    up to ``MAX_ROUNDS`` times: a lost worker costs a few tasks' time, not the job. Task errors
    are classified by ``classify``; a deterministic one fails the stage at once, unrerun.

    Scattering places each part on a worker up front, and its task follows it: the work is
    divided before anyone knows how long each task takes. Where parts are small and task times
    unequal and unpredictable (a bundle's recognition), ``scatter_parts=False`` sends each part
    inside its task instead: the tasks then depend only on the shared values, so Dask's
    scheduler queues them and hands the next one, in submission order, to whichever worker
    frees up first (greedy list scheduling; largest first if the caller sorts so).
    """
    from distributed.client import FutureCancelledError

    if len(labels) != len(parts):
        raise ValueError("one label per part")
    results: dict[int, tuple[Any, TaskStats]] = {}
    todo = list(range(len(parts)))
    for _ in range(MAX_ROUNDS):
        # hash=False: unique keys, so two jobs on one long-lived cluster never alias parts.
        chosen = [parts[i] for i in todo]
        remote = client.scatter(chosen, hash=False) if scatter_parts else chosen
        common = [client.scatter(value, broadcast=True, hash=False) for value in shared]
        futures = [
            client.submit(
                guarded,
                func,
                part,
                *common,
                *args,
                key=f"{func.__name__}-{uuid.uuid4()}",  # the dashboard shows what runs
                retries=retries,
                **kwargs,
            )
            for part in remote
        ]
        index = {future.key: i for future, i in zip(futures, todo, strict=True)}
        lost: list[int] = []
        try:
            for future in completed(client, futures):
                i = index[future.key]
                if future.status == "cancelled":
                    lost.append(i)
                elif future.status == "error":
                    exc = future.exception()
                    raise classify(exc, labels[i]) from exc
                else:
                    try:
                        value = future.result()
                    except FutureCancelledError:
                        # Finished, but its result lived on the worker that just died.
                        lost.append(i)
                        continue
                    if isinstance(value, Refused):
                        raise refusal(value, labels[i])
                    results[i] = value
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            del chosen, remote, common, futures  # release the parts and results on the workers
        if not lost:
            done = [results[i] for i in range(len(parts))]
            return Results((value for value, _ in done), (stats for _, stats in done))
        todo = sorted(lost)
        log.warning("%d part(s) lost with their worker; scattering them again", len(todo))
    raise ClusterError(
        f"{len(todo)} task(s) ({labels[todo[0]]}, ...) lost their workers {MAX_ROUNDS} times"
    )
