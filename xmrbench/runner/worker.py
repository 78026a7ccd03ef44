"""One attempt at one run, as every executor performs it, in whatever process it lands.

:func:`attempt_run` takes the run's lock in the store, re-checks the store under the
lock (another process may have finished the run meanwhile), trains and evaluates the
run through :func:`xmrbench.runner.run.run_one`, which writes the result
atomically, and returns a :class:`RunOutcome` instead of raising: the executors
carry outcomes between processes and machines.

:func:`process_worker_main` is the body of a ``--executor process`` worker, and
:func:`ray_entry` the task of ``--executor ray``.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from xmrbench.engine.train import Events, NullEvents
from xmrbench.errors import StoreError, XmrbenchError
from xmrbench.recipe.resolve import ResolvedRecipe
from xmrbench.runner.locks import RunLock
from xmrbench.store.schema import ResultDoc
from xmrbench.store.store import ResultStore

OutcomeState = Literal["ran", "done_elsewhere", "busy", "interrupted", "failed"]

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass(frozen=True)
class RunTask:
    """One (cell, seed) of a resolved recipe, to be computed into the store at ``store_root``.

    ``expect`` is the identity (inode, size, mtime) of the result file when the run
    was planned, so that ``force`` recomputes a result once but does not redo one
    that another forced process rewrote meanwhile. ``wait`` waits for a run that
    another process holds instead of reporting it busy. ``keep_sims`` keeps the run's
    final similarity matrices for an ensemble scheduled after it (``runner/kept_sims.py``).
    ``after``: the keys of the runs of the same batch that must be stored before this
    one starts (its ensemble members, the source of its initial weights or artifacts).
    """

    resolved: ResolvedRecipe
    cell_id: str
    seed: int
    store_root: str
    force: bool = False
    expect: tuple[int, int, int] | None = None
    wait: bool = False
    attempt: int = 1
    keep_sims: bool = False
    after: tuple[tuple[str, int], ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        return (self.cell_id, self.seed)

    @property
    def label(self) -> str:
        return f"{self.resolved.id}/{self.cell_id}/seed{self.seed}"

    def again(self, **changes: Any) -> RunTask:
        return replace(self, **changes)


@dataclass
class RunOutcome:
    """What became of one attempt.

    ``ran``: computed and stored here; ``done_elsewhere``: another process stored it
    first; ``busy``: another live process holds the run; ``interrupted``: stopped at
    an epoch boundary (its checkpoint is kept for the next attempt); ``failed``:
    ``message`` is one line, ``user_error`` says it is the input's fault (an
    :class:`~xmrbench.errors.XmrbenchError`, not retried) rather than a crash
    (``detail`` holds the traceback; retried by the parallel executors).
    """

    state: OutcomeState
    cell_id: str
    seed: int
    doc: ResultDoc | None = None
    path: str | None = None
    message: str | None = None
    user_error: bool = False
    detail: str | None = None
    attempts: int = 1
    host: str = field(default_factory=lambda: f"{os.getpid()}@{_hostname()}")


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _crash(task: RunTask, message: str, detail: str | None) -> RunOutcome:
    return RunOutcome("failed", task.cell_id, task.seed, message=f"{task.label}: {message}", detail=detail,
                      attempts=task.attempt)


def attempt_run(
    task: RunTask,
    *,
    cache: Any,
    device: torch.device,
    start: Callable[[], Events] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    capture_crashes: bool = True,
) -> RunOutcome:
    """Lock, re-check, run and store one (cell, seed); never raises for a failed run.

    ``start()`` is called once the run is really computed here (not for a run found
    busy or done) and returns the run's progress events. Unexpected exceptions are
    returned as crashes when ``capture_crashes``, else re-raised (the in-process
    executor keeps their traceback).
    """
    from xmrbench.runner.run import run_one

    store = ResultStore(task.store_root)
    resolved = task.resolved
    try:
        cell = resolved.cell(task.cell_id)
    except XmrbenchError as exc:
        return RunOutcome("failed", task.cell_id, task.seed, message=exc.one_line(), user_error=True)
    rid, chash, seed = resolved.id, cell.hash or "", task.seed
    lock = RunLock(store.lock_path(rid, cell.id, chash, seed))
    try:
        got = lock.acquire(wait=task.wait, stop_requested=stop_requested)
    except StoreError as exc:
        return RunOutcome("failed", cell.id, seed, message=exc.one_line(), user_error=True, attempts=task.attempt)
    if not got:
        if task.wait:  # stopped while waiting for the other process
            return RunOutcome("interrupted", cell.id, seed, attempts=task.attempt)
        return RunOutcome("busy", cell.id, seed, message=lock.holder(), attempts=task.attempt)
    stored = False
    try:
        store.clean_run_temporaries(rid, cell.id, chash, seed)
        status = store.status(rid, cell.id, chash, seed)
        if status.state == "done" and (not task.force or store.identity(status.path) != task.expect):
            stored = True
            return RunOutcome("done_elsewhere", cell.id, seed, doc=status.doc, path=str(status.path),
                              attempts=task.attempt)
        events = start() if start is not None else NullEvents()
        doc, path = run_one(resolved, cell, seed, store=store, cache=cache, device=device, events=events,
                            stop_requested=stop_requested, keep_sims=task.keep_sims, reuse_training=not task.force)
        stored = True
        return RunOutcome("ran", cell.id, seed, doc=doc, path=str(path), attempts=task.attempt)
    except KeyboardInterrupt:
        return RunOutcome("interrupted", cell.id, seed, attempts=task.attempt)
    except XmrbenchError as exc:
        return RunOutcome("failed", cell.id, seed, message=exc.one_line(), user_error=True, attempts=task.attempt)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            where = exc.filename or str(store.work_dir(rid, cell.id, chash, seed))
            err = StoreError(f"no space left on device ({exc.strerror}); results stored so far are intact", where=str(where))
            return RunOutcome("failed", cell.id, seed, message=err.one_line(), user_error=True, attempts=task.attempt)
        if not capture_crashes:
            raise
        return _crash(task, f"{exc.__class__.__name__}: {exc}", traceback.format_exc())
    except Exception as exc:  # a crash: reported with its traceback, retried by the parallel executors
        if not capture_crashes:
            raise
        return _crash(task, f"{exc.__class__.__name__}: {exc}", traceback.format_exc())
    finally:
        lock.release(remove=stored)


# ---------------------------------------------------------------------------------
# --executor process: a long-lived worker process fed through a pipe


class _PipeEvents:
    """Forwards a run's epoch events to the parent (batch events are too chatty to send)."""

    def __init__(self, conn: Any, key: tuple[str, int]):
        self.conn = conn
        self.key = key

    def epoch_start(self, epoch: int, n_epochs: int, n_batches: int) -> None:
        self.conn.send(("epoch_start", self.key, (epoch, n_epochs, n_batches)))

    def batch_end(self, batch: int, loss: float) -> None:
        pass

    def epoch_end(self, epoch: int, stats: dict[str, float]) -> None:
        self.conn.send(("epoch_end", self.key, (epoch, dict(stats))))

    def warn(self, message: str) -> None:
        self.conn.send(("warn", self.key, (message,)))


class _WorkerStop:
    """A worker's stop state: its own SIGINT (from the terminal's process group) or the parent's event."""

    def __init__(self, event: Any):
        self.event = event
        self.sigint = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.sigint:
            raise KeyboardInterrupt
        self.sigint = True

    def __call__(self) -> bool:
        return self.sigint or self.event.is_set()


def _watch_parent() -> None:
    """End this worker when its parent is gone (killed with -9, say): no orphan keeps running."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def process_worker_main(conn: Any, stop_event: Any, device_name: str, threads: int, env: dict[str, str]) -> None:
    """Serve tasks from ``conn`` until it sends ``None`` or closes.

    ``env`` holds the parent's ``XMRBENCH_*`` variables (cache and recipe locations).

    Messages to the parent: ``("start", key, None)``, ``("epoch_start", key, ...)``,
    ``("epoch_end", key, ...)``, ``("outcome", key, RunOutcome)``.
    """
    from xmrbench.engine.train import resolve_device
    from xmrbench.runner.run import DataCache

    stop = _WorkerStop(stop_event)
    signal.signal(signal.SIGINT, stop.handle)
    threading.Thread(target=_watch_parent, daemon=True).start()
    for key in [k for k in os.environ if k.startswith("XMRBENCH_")]:
        del os.environ[key]
    os.environ.update(env)
    torch.set_num_threads(max(1, threads))
    cache = DataCache()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:
            return
        try:
            device = resolve_device(device_name)
        except XmrbenchError as exc:
            conn.send(("outcome", task.key, RunOutcome("failed", task.cell_id, task.seed, message=exc.one_line(),
                                                       user_error=True, attempts=task.attempt)))
            continue

        def start(task: RunTask = task) -> Events:
            conn.send(("start", task.key, None))
            return _PipeEvents(conn, task.key)

        try:
            outcome = attempt_run(task, cache=cache, device=device, start=start, stop_requested=stop)
        except KeyboardInterrupt:  # a second Ctrl-C outside the run's own handling
            outcome = RunOutcome("interrupted", task.cell_id, task.seed, attempts=task.attempt)
        try:
            conn.send(("outcome", task.key, outcome))
        except (BrokenPipeError, OSError):
            return


# ---------------------------------------------------------------------------------
# --executor ray: the remote task and the shared stop flag


class StopBox:
    """A flag the driver sets on Ctrl-C; the runs poll it at every epoch end (a Ray actor)."""

    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


_RAY_CACHE: Any = None


def ray_entry(task: RunTask, stop_box: Any, device_name: str, threads: int) -> RunOutcome:
    """The body of one Ray task: the same attempt, with a per-worker-process data cache."""
    import ray

    from xmrbench.engine.train import resolve_device
    from xmrbench.runner.run import DataCache

    global _RAY_CACHE
    if _RAY_CACHE is None:
        _RAY_CACHE = DataCache()
    torch.set_num_threads(max(1, threads))
    try:
        device = resolve_device(device_name)
    except XmrbenchError as exc:
        return RunOutcome("failed", task.cell_id, task.seed, message=exc.one_line(), user_error=True,
                          attempts=task.attempt)

    def stop_requested() -> bool:
        return bool(ray.get(stop_box.is_set.remote()))

    return attempt_run(task, cache=_RAY_CACHE, device=device, stop_requested=stop_requested)
