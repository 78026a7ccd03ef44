"""Executors: where the runs of a recipe are computed.

- ``local`` (default): one after another in this process.
- ``process``: a pool of ``jobs`` worker processes on this machine (each with the
  available CPUs divided among the jobs as torch threads, unless ``--threads``).
- ``ray``: tasks on a Ray cluster (``--address``; without one, a Ray instance on
  this machine), one CPU and one torch thread each (``--threads`` more), at most ``jobs`` at a time
  (default: as many as the cluster has CPUs). Needs the optional extra: ``pip install 'xmrbench[cluster]'``. The
  store must be a directory every node sees at the same path (a shared filesystem
  with working ``flock``).

Every executor computes a run through :func:`xmrbench.runner.worker.attempt_run`, so
each run takes its lock in the store, is re-checked under the lock and is written
atomically by the process that computed it. A worker that dies (killed, out of
memory, a lost node) or crashes is retried up to ``retries`` times; a run that fails
because of its input (an ``XmrbenchError``: a NaN loss, bad data, a full disk) is not
retried, since it would fail again. On a stop request (Ctrl-C) nothing new starts
and running runs stop at their next epoch end, after its checkpoint.

Every executor hands out runs through a :class:`TaskQueue`: in the driver's order,
each as soon as the runs it needs (``RunTask.after``) are stored, so a free worker
takes a later stage's run of one seed while an earlier stage's run of another seed
is still training, instead of idling until the whole stage is done.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from typing import Any, Protocol

import torch

from xmrbench.errors import UsageError
from xmrbench.registry import Registry
from xmrbench.runner.threads import available_cpus
from xmrbench.runner.worker import RunOutcome, RunTask, attempt_run

DEFAULT_RETRIES = 2


class StopState(Protocol):
    """The driver's stop flag (see ``execute._StopFlag``)."""

    requested: bool


class Hooks(Protocol):
    """How an executor tells the driver what happens; the driver turns it into reporter calls."""

    def started(self, task: RunTask) -> Any: ...  # returns the run's Events
    def finished(self, task: RunTask, outcome: RunOutcome) -> None: ...
    def retrying(self, task: RunTask, outcome: RunOutcome) -> None: ...


class Executor(Protocol):
    name: str

    def run(self, tasks: list[RunTask], *, device: str, hooks: Hooks, stop: StopState) -> None:
        """Compute ``tasks``, calling ``hooks.finished`` once per task with its final outcome."""
        ...

    def close(self) -> None:
        """Release workers or connections kept between calls of ``run``."""
        ...


class TaskQueue:
    """The runs an executor still has to hand out, in the driver's order.

    :meth:`pop_ready` gives the first run whose needs (``RunTask.after``) are all
    stored; a need outside this batch (stored before it started) counts as stored.
    :meth:`settle` takes each attempt's outcome:

    - a crash (not the input's fault) within ``retries``: the run goes back to the front;
    - ``busy`` (another live process holds the run): reported, then queued at the back
      as a run that waits for that process and takes over if it stops without a
      result. The runs that need it wait too; every other run goes first;
    - anything else is final. A run whose need ended without a stored result (failed,
      interrupted, or itself not run) is then settled as failed, with one line naming
      the need, and so, in turn, are the runs that need it.
    """

    def __init__(self, tasks: list[RunTask], *, retries: int, stop: StopState):
        self._pending: list[RunTask] = list(tasks)
        self._open = {t.key for t in tasks}  # in this batch, not settled yet
        self._unstored: set[tuple[str, int]] = set()  # settled without a stored result
        self.retries = retries
        self.stop = stop

    def __bool__(self) -> bool:
        return bool(self._pending)

    def clear(self) -> None:
        self._pending.clear()

    def pop_ready(self, hooks: Hooks) -> RunTask | None:
        """The first run that can start now, or None while every pending one waits for a running one."""
        self._settle_unreachable(hooks)
        for i, task in enumerate(self._pending):
            if not any(key in self._open for key in task.after):
                return self._pending.pop(i)
        return None

    def push_front(self, task: RunTask) -> None:
        self._pending.insert(0, task)

    def settle(self, task: RunTask, outcome: RunOutcome, hooks: Hooks) -> None:
        if outcome.state == "failed" and not outcome.user_error and task.attempt <= self.retries \
                and not self.stop.requested:
            hooks.retrying(task, outcome)
            self.push_front(task.again(attempt=task.attempt + 1))
            return
        hooks.finished(task, outcome)
        if outcome.state == "busy" and not task.wait and not self.stop.requested:
            self._pending.append(task.again(wait=True))
            return
        self._open.discard(task.key)
        if outcome.state not in ("ran", "done_elsewhere"):
            self._unstored.add(task.key)

    def _settle_unreachable(self, hooks: Hooks) -> None:
        changed = True
        while changed:
            changed = False
            for task in list(self._pending):
                need = next((key for key in task.after if key in self._unstored), None)
                if need is None:
                    continue
                self._pending.remove(task)
                hooks.finished(task, RunOutcome(
                    "failed", task.cell_id, task.seed, user_error=True, attempts=0,
                    message=f"{task.label}: not run: it needs {need[0]} (seed {need[1]}), which has no result"))
                self._open.discard(task.key)
                self._unstored.add(task.key)
                changed = True


# ---------------------------------------------------------------------------------


class LocalExecutor:
    """Runs one after another in this process (today's behaviour); crashes keep their traceback."""

    name = "local"

    def __init__(self, *, cache: Any = None, threads: int | None = None):
        from xmrbench.runner.run import DataCache
        from xmrbench.runner.threads import setup_threads

        self.cache = cache if cache is not None else DataCache()
        self.threads = setup_threads(threads) if threads is not None else torch.get_num_threads()

    def run(self, tasks: list[RunTask], *, device: str, hooks: Hooks, stop: StopState) -> None:
        dev = torch.device(device)
        queue = TaskQueue(tasks, retries=0, stop=stop)
        while queue and not stop.requested:
            task = queue.pop_ready(hooks)
            if task is None:  # cannot happen one run at a time: a run's needs come before it
                return
            outcome = attempt_run(
                task, cache=self.cache, device=dev, start=lambda t=task: hooks.started(t),
                stop_requested=lambda: stop.requested, capture_crashes=False,
            )
            queue.settle(task, outcome, hooks)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: Any
    conn: Any
    task: RunTask | None = None
    events: Any = None


class ProcessExecutor:
    """A pool of ``jobs`` worker processes on this machine.

    Workers are forked from a fork server that imported torch and xmrbench once (and
    never ran a torch operation, so no thread pool is copied), which makes starting
    or replacing a worker cheap and leaks no state of this process into it; POSIX
    only, like the run locks. The workers (and the datasets they loaded) are kept
    between calls of :meth:`run` until :meth:`close`. A worker whose parent
    disappears (``kill -9``) ends itself.
    """

    name = "process"

    def __init__(self, jobs: int, *, retries: int = DEFAULT_RETRIES, threads: int | None = None):
        if jobs < 1:
            raise UsageError(f"--jobs {jobs}: expected a positive number of worker processes")
        if retries < 0:
            raise UsageError(f"--retries {retries}: expected a non-negative number")
        self.jobs = jobs
        self.retries = retries
        self.threads = threads or max(1, available_cpus() // jobs)
        self._ctx = mp.get_context("forkserver")
        # imported once by the fork server; torch._dynamo is what the first optimiser would import
        self._ctx.set_forkserver_preload(["xmrbench.runner.worker", "torch._dynamo"])
        self._workers: list[_Worker] = []
        self._stop_event: Any = None
        self._device: str | None = None

    def _spawn(self, stop_event: Any, device: str) -> _Worker:
        from xmrbench.runner.worker import process_worker_main

        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=process_worker_main,
            args=(child_conn, stop_event, device, self.threads, _worker_env()),
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn)

    def run(self, tasks: list[RunTask], *, device: str, hooks: Hooks, stop: StopState) -> None:
        if not tasks:
            return
        if self._device is not None and device != self._device:
            self.close()
        self._device = device
        if self._stop_event is None:
            self._stop_event = self._ctx.Event()
        stop_event = self._stop_event
        stop_event.clear()
        queue = TaskQueue(tasks, retries=self.retries, stop=stop)
        workers = self._workers
        workers[:] = [w for w in workers if w.process.is_alive()]
        while len(workers) < min(self.jobs, len(tasks)):
            workers.append(self._spawn(stop_event, device))
        try:
            while queue or any(w.task is not None for w in workers):
                if stop.requested:
                    stop_event.set()
                    queue.clear()
                for w in workers:
                    if w.task is None and queue:
                        task = queue.pop_ready(hooks)
                        if task is None:  # every pending run waits for a running one
                            break
                        w.task, w.events = task, None
                        try:
                            w.conn.send(w.task)
                        except (BrokenPipeError, OSError):
                            pass  # the death is noticed below
                busy = [w for w in workers if w.task is not None]
                if not busy:
                    if queue:  # nothing runs, so nothing pending can start (not reached: a run's needs precede it)
                        return
                    continue
                ready = set(wait_for([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5))
                for i, w in enumerate(workers):
                    if w.task is None:
                        continue
                    if w.conn in ready:
                        self._drain(w, hooks, queue)
                    if w.task is not None and (w.process.sentinel in ready or not w.process.is_alive()):
                        self._drain(w, hooks, queue)
                        if w.task is not None:  # died without an outcome
                            w.process.join(5)
                            code = w.process.exitcode
                            outcome = RunOutcome(
                                "failed", w.task.cell_id, w.task.seed, attempts=w.task.attempt,
                                message=f"{w.task.label}: worker process {w.process.pid} died (exit code {code})",
                            )
                            task, w.task = w.task, None
                            queue.settle(task, outcome, hooks)
                        w.conn.close()
                        workers[i] = self._spawn(stop_event, device)
        except BaseException:  # a second Ctrl-C (stop now: the last epoch checkpoints stay), or a bug here
            for w in workers:
                if w.process.is_alive():
                    w.process.kill()
            self.close()
            raise

    def close(self) -> None:
        workers, self._workers = self._workers, []
        self._shutdown(workers)

    def _drain(self, w: _Worker, hooks: Hooks, queue: TaskQueue) -> None:
        """Handle every message the worker has sent so far."""
        while w.task is not None:
            try:
                if not w.conn.poll():
                    return
                kind, key, payload = w.conn.recv()
            except (EOFError, OSError):
                return
            if key != w.task.key:
                continue
            if kind == "start":
                w.events = hooks.started(w.task)
            elif kind == "epoch_start" and w.events is not None:
                w.events.epoch_start(*payload)
            elif kind == "epoch_end" and w.events is not None:
                w.events.epoch_end(*payload)
            elif kind == "warn" and w.events is not None:
                w.events.warn(*payload)
            elif kind == "outcome":
                task, w.task = w.task, None
                queue.settle(task, payload, hooks)

    @staticmethod
    def _shutdown(workers: list[_Worker]) -> None:
        for w in workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 10
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
            try:
                w.conn.close()
            except OSError:
                pass


def _worker_env() -> dict[str, str]:
    """This process's xmrbench settings (the fork server may have started under other ones)."""
    return {k: v for k, v in os.environ.items() if k.startswith("XMRBENCH_")}


# ---------------------------------------------------------------------------------


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--executor ray needs Ray: pip install 'xmrbench[cluster]' (or pip install 'ray[default]')"
        ) from None
    return ray


class RayExecutor:
    """Tasks on a Ray cluster; at most as many in flight as the cluster has CPUs (or GPUs) for them."""

    name = "ray"

    def __init__(self, *, address: str | None = None, retries: int = DEFAULT_RETRIES, jobs: int | None = None,
                 threads: int | None = None):
        if retries < 0:
            raise UsageError(f"--retries {retries}: expected a non-negative number")
        if jobs is not None and jobs < 1:
            raise UsageError(f"--jobs {jobs}: expected a positive number of runs at a time")
        self.address = address
        self.retries = retries
        self.jobs = jobs
        # torch threads per run (default one), each a CPU the run reserves; the cluster's CPUs bound the runs in flight
        self.cpus_per_run = threads or 1
        self._owned = False

    def _connect(self, ray: Any) -> bool:
        """Connect (or start a local instance); True if this call did, so it also disconnects."""
        if ray.is_initialized():
            return False
        from xmrbench.runner.threads import OMP_DEFAULTS

        env_vars = {k: os.environ[k] for k in ("XMRBENCH_CACHE", "XMRBENCH_RECIPES") if os.environ.get(k)}
        env_vars.update({k: os.environ.get(k, v) for k, v in OMP_DEFAULTS.items()})  # before the workers load torch
        kwargs: dict[str, Any] = {"log_to_driver": False, "runtime_env": {"env_vars": env_vars}}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["include_dashboard"] = False
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            target = self.address or "a local Ray instance"
            raise UsageError(f"--address {target}: cannot connect to the Ray cluster ({' '.join(str(exc).split())[:200]})") from None
        return True

    def run(self, tasks: list[RunTask], *, device: str, hooks: Hooks, stop: StopState) -> None:
        if not tasks:
            return
        ray = _ray()
        from xmrbench.runner.worker import StopBox, ray_entry

        if not self._owned:
            self._owned = self._connect(ray)
        gpus = 1 if device == "cuda" else 0
        remote = ray.remote(num_cpus=self.cpus_per_run, num_gpus=gpus, max_retries=0)(ray_entry)
        box = ray.remote(num_cpus=0)(StopBox).remote()
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // self.cpus_per_run)
        if gpus:
            slots = min(slots, int(resources.get("GPU", 0)))
        if self.jobs is not None:
            slots = min(slots, self.jobs)
        if slots < 1:
            raise UsageError(f"--executor ray: the cluster has no room for one run ({resources})")
        queue = TaskQueue(tasks, retries=self.retries, stop=stop)
        inflight: dict[Any, RunTask] = {}
        stop_sent = False
        try:
            while queue or inflight:
                if stop.requested:
                    queue.clear()
                    if not stop_sent:
                        ray.get(box.set.remote())
                        stop_sent = True
                while queue and len(inflight) < slots:
                    task = queue.pop_ready(hooks)
                    if task is None:  # every pending run waits for a running one
                        break
                    inflight[remote.remote(task, box, device, self.cpus_per_run)] = task
                if not inflight:
                    if queue:  # nothing runs, so nothing pending can start (not reached: a run's needs precede it)
                        return
                    continue
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in done:
                    task = inflight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # the worker or its node died
                        outcome = RunOutcome("failed", task.cell_id, task.seed, attempts=task.attempt,
                                             message=f"{task.label}: Ray worker failed ({exc.__class__.__name__})",
                                             detail=str(exc))
                    queue.settle(task, outcome, hooks)
        except KeyboardInterrupt:  # a second Ctrl-C: cancel what runs (last epoch checkpoints stay)
            for ref in inflight:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        """Disconnect (and stop the local Ray instance) if this executor connected."""
        if self._owned:
            self._owned = False
            _ray().shutdown()


# ---------------------------------------------------------------------------------


ExecutorFactory = Callable[..., Executor]

EXECUTORS: Registry[ExecutorFactory] = Registry(
    "executor",
    {
        "local": LocalExecutor,
        "process": ProcessExecutor,
        "ray": RayExecutor,
    },
)


def make_executor(
    name: str, *, jobs: int | None = None, retries: int | None = None, address: str | None = None, cache: Any = None,
    threads: int | None = None,
) -> Executor:
    """The executor named on the command line, with its options checked against it.

    ``threads``: torch threads per run (local: this process; process: each worker,
    default the available CPUs divided among the jobs; ray: each task, default 1).
    """
    if name not in EXECUTORS:
        known = ", ".join(EXECUTORS.names())
        raise UsageError(f"--executor {name!r}: unknown executor; known: {known}")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: expected a positive number of worker processes")
    if retries is not None and retries < 0:
        raise UsageError(f"--retries {retries}: expected a non-negative number")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: expected a positive number of threads")
    if address is not None and name != "ray":
        raise UsageError(f"--address {address}: only --executor ray connects to a cluster")
    if name == "local":
        if jobs not in (None, 1):
            raise UsageError(f"--jobs {jobs}: --executor local runs one run at a time; use --executor process")
        if retries is not None:
            raise UsageError("--retries: --executor local does not retry (a crash in this process is a bug); "
                             "use --executor process or ray")
        return LocalExecutor(cache=cache, threads=threads)
    if name == "process":
        return ProcessExecutor(jobs or available_cpus(), retries=DEFAULT_RETRIES if retries is None else retries,
                               threads=threads)
    return RayExecutor(address=address, retries=DEFAULT_RETRIES if retries is None else retries, jobs=jobs,
                       threads=threads)
