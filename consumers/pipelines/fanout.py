"""Collecting a batch of cluster tasks with no silent loss.

Every task is submitted with a few immediate retries (Dask reruns a task that raised, on any
worker). ``gather_all`` then returns every result, in submission order, or raises for the first
task that still failed, after cancelling the rest: a job either accounts for every chunk and
shard or fails, never publishes a partial result.

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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import ClusterError, TransientError, VoxfleetError

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


def guarded(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs on a worker: ``func(*args, **kwargs)``, with a deterministic error as a ``Refused``
    value (its traceback goes to the worker's log) and the ``RERUN`` kinds raised for Dask."""
    try:
        return func(*args, **kwargs)
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


def gather_all(client: Any, futures: Sequence[Any], labels: Sequence[str]) -> list[Any]:
    """The results of ``futures`` in order; on the first failure, cancel the others and raise
    ``classify(...)`` naming the task by its label.

    ``as_completed`` is given ``client``'s loop (here and in ``map_scattered``): by default it
    waits on the *default* client's, which is whichever Client this process made last. With two
    (a watcher, a shared cluster's) the futures' events get bound to the other loop, and a
    result that must be re-gathered after its worker died then fails with "bound to a different
    event loop" instead of being recomputed.
    """
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    if len(labels) != len(futures):
        raise ValueError("one label per future")
    position = {future.key: i for i, future in enumerate(futures)}
    results: dict[int, Any] = {}
    try:
        for future in as_completed(futures, loop=client.loop):
            i = position[future.key]
            if future.status == "error":
                exc = future.exception()
                raise classify(exc, labels[i]) from exc
            if future.status == "cancelled":
                raise ClusterError(f"{labels[i]} was cancelled (the cluster is going away?)")
            try:
                results[i] = future.result()
            except FutureCancelledError:
                raise ClusterError(f"{labels[i]}: its result was lost with its worker") from None
    except BaseException:
        # Stop the rest of the work on a cluster that may outlive this job (a shared one).
        client.cancel(list(futures))
        raise
    return [results[i] for i in range(len(futures))]


MAX_ROUNDS = 3  # re-scatters after lost workers before the job gives up on the stage


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
) -> list[Any]:
    """``func(part, *shared, *args, **kwargs)`` for every part on the cluster; results in order.

    Each part is scattered once (tasks carry a reference, not a copy); ``shared`` values (large
    arrays every task reads) are sent to every worker once per round. A worker that dies takes
    its scattered data with it -- Dask then cancels the tasks that needed them, and cannot
    recompute data it never had a recipe for. Those parts are scattered again from the
    consumer's copy, with the shared values (Dask's memory manager drops broadcast replicas it
    deems surplus, so the dead worker may have held the only copy), and their tasks resubmitted,
    up to ``MAX_ROUNDS`` times: a lost worker costs a few tasks' time, not the job. Task errors
    are classified as in ``gather_all``; a deterministic one fails the stage at once, unrerun.

    Scattering places each part on a worker up front, and its task follows it: the work is
    divided before anyone knows how long each task takes. Where parts are small and task times
    unequal and unpredictable (a bundle's recognition), ``scatter_parts=False`` sends each part
    inside its task instead: the tasks then depend only on the shared values, so Dask's
    scheduler queues them and hands the next one, in submission order, to whichever worker
    frees up first (greedy list scheduling; largest first if the caller sorts so).
    """
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    if len(labels) != len(parts):
        raise ValueError("one label per part")
    results: dict[int, Any] = {}
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
            for future in as_completed(futures, loop=client.loop):
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
            return [results[i] for i in range(len(parts))]
        todo = sorted(lost)
        log.warning("%d part(s) lost with their worker; scattering them again", len(todo))
    raise ClusterError(
        f"{len(todo)} task(s) ({labels[todo[0]]}, ...) lost their workers {MAX_ROUNDS} times"
    )
