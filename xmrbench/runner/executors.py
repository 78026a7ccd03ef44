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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
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
        for task in tasks:
            if stop.requested:
                return
            outcome = attempt_run(
                task, cache=self.cache, device=dev, start=lambda t=task: hooks.started(t),
                stop_requested=lambda: stop.requested, capture_crashes=False,
            )
            hooks.finished(task, outcome)

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
        pending: deque[RunTask] = deque(tasks)
        workers = self._workers
        workers[:] = [w for w in workers if w.process.is_alive()]
        while len(workers) < min(self.jobs, len(tasks)):
            workers.append(self._spawn(stop_event, device))
        try:
            while pending or any(w.task is not None for w in workers):
                if stop.requested:
                    stop_event.set()
                    pending.clear()
                for w in workers:
                    if w.task is None and pending:
                        w.task = pending.popleft()
                        w.events = None
                        try:
                            w.conn.send(w.task)
                        except (BrokenPipeError, OSError):
                            pass  # the death is noticed below
                busy = [w for w in workers if w.task is not None]
                if not busy:
                    continue
                ready = set(wait_for([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5))
                for i, w in enumerate(workers):
                    if w.task is None:
                        continue
                    if w.conn in ready:
                        self._drain(w, hooks, pending, stop)
                    if w.task is not None and (w.process.sentinel in ready or not w.process.is_alive()):
                        self._drain(w, hooks, pending, stop)
                        if w.task is not None:  # died without an outcome
                            w.process.join(5)
                            code = w.process.exitcode
                            outcome = RunOutcome(
                                "failed", w.task.cell_id, w.task.seed, attempts=w.task.attempt,
                                message=f"{w.task.label}: worker process {w.process.pid} died (exit code {code})",
                            )
                            self._settle(w.task, outcome, hooks, pending, stop)
                            w.task = None
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

    def _drain(self, w: _Worker, hooks: Hooks, pending: deque[RunTask], stop: StopState) -> None:
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
                self._settle(task, payload, hooks, pending, stop)

    def _settle(self, task: RunTask, outcome: RunOutcome, hooks: Hooks, pending: deque[RunTask], stop: StopState) -> None:
        if outcome.state == "failed" and not outcome.user_error and task.attempt <= self.retries and not stop.requested:
            hooks.retrying(task, outcome)
            pending.appendleft(task.again(attempt=task.attempt + 1))
            return
        hooks.finished(task, outcome)

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
        pending: deque[RunTask] = deque(tasks)
        inflight: dict[Any, RunTask] = {}
        stop_sent = False
        try:
            while pending or inflight:
                if stop.requested:
                    pending.clear()
                    if not stop_sent:
                        ray.get(box.set.remote())
                        stop_sent = True
                while pending and len(inflight) < slots:
                    task = pending.popleft()
                    inflight[remote.remote(task, box, device, self.cpus_per_run)] = task
                if not inflight:
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
                    if outcome.state == "failed" and not outcome.user_error and task.attempt <= self.retries \
                            and not stop.requested:
                        hooks.retrying(task, outcome)
                        pending.appendleft(task.again(attempt=task.attempt + 1))
                        continue
                    hooks.finished(task, outcome)
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
