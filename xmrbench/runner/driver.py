"""Execution: run every (cell, seed) of a resolved recipe that the store does not hold yet.

A single run is ``runner/run.py``'s business; this module decides which runs to
compute and in which order, hands them to an executor and keeps the summary. A
finished result is skipped unless ``force``; a corrupted or partial one is
reported and recomputed. The first Ctrl-C lets the current epoch finish and
checkpoint, then stops; a second one stops at once (the last epoch checkpoint
is still there). Either way a re-run resumes where it stopped.

Where the runs are computed is the executor's business (``runner/executors.py``:
in this process, a process pool, a Ray cluster). The driver hands it every run at
once, in stage order, each with the runs it needs (``RunTask.after``: an ensemble's
members, a later stage's sources, of the same seed); a run starts as soon as those
are stored, so one seed's second round does not wait for another seed's first. An
ensemble is placed right after the last of its members, so that it averages their
kept matrices (``runner/kept_sims.py``) and frees them as soon as it can. Every run is
computed under its lock in the store, so two ``reproduce`` processes on one recipe
share the work: a run that another live process holds is reported, and waited for once
nothing else can start (then taken over if that process stopped without finishing it).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from xmrbench.engine.train import Events, NullEvents
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.runner.adopt import adopt_run, index_trainings, repair_training_refs, twins
from xmrbench.runner.kept_sims import release
from xmrbench.runner.locks import RunLock
from xmrbench.runner.run import DataCache
from xmrbench.runner.worker import RunOutcome, RunTask
from xmrbench.store.schema import ResultDoc
from xmrbench.store.store import ResultStore

if TYPE_CHECKING:
    from xmrbench.runner.executors import Executor


Key = tuple[str, int]  # (cell id, seed): one run


class Reporter(Protocol):
    """What the runner tells its caller (the command line draws progress from it).

    ``run_start`` comes when a run really starts computing here (with a parallel
    executor several runs are under way at once, each with its own events);
    ``run_skip`` when this process does not compute a run: ``why`` is ``"done"``
    (stored before this call started) or ``"finished by another process"``;
    ``run_failed`` with one line per failed run. Reporters written before
    ``run_failed`` existed keep working (it is looked up, not required).
    """

    def run_start(self, cell: Cell, seed: int, index: int, total: int) -> Events: ...
    def run_skip(self, cell: Cell, seed: int, why: str) -> None: ...
    def run_end(self, cell: Cell, seed: int, doc: ResultDoc, path: Path) -> None: ...
    def warn(self, message: str) -> None: ...


class SilentReporter:
    def run_start(self, cell: Cell, seed: int, index: int, total: int) -> Events:
        return NullEvents()

    def run_skip(self, cell: Cell, seed: int, why: str) -> None:
        pass

    def run_end(self, cell: Cell, seed: int, doc: ResultDoc, path: Path) -> None:
        pass

    def run_failed(self, cell: Cell, seed: int, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class RunFailure:
    cell_id: str
    seed: int
    message: str  # one line
    user_error: bool  # the input's fault (exit 2), else a crash that survived its retries
    attempts: int = 1
    detail: str | None = None  # a crash's traceback


@dataclass
class Summary:
    ran: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    recomputed_corrupt: list[Path] = field(default_factory=list)
    recomputed_stale: list[Path] = field(default_factory=list)  # a file the config names changed since
    retrained_weightless: list[Path] = field(default_factory=list)  # stored without its model, needed by a later run
    interrupted: bool = False
    finished_elsewhere: list[tuple[str, int]] = field(default_factory=list)  # stored by another process meanwhile
    waited_for: list[tuple[str, int]] = field(default_factory=list)  # held by another process when first tried
    failed: list[RunFailure] = field(default_factory=list)
    not_run: list[tuple[str, int]] = field(default_factory=list)  # left undone after a failure or a stop
    adopted: list[tuple[str, int]] = field(default_factory=list)  # a twin cell's run, copied (runner/adopt.py)
    # of ``ran``: evaluated from a model another cell trained (same training hash, runner/adopt.py)
    reused_training: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


class _StopFlag:
    """First SIGINT: stop after the current epoch. Second: stop now.

    ``request()`` asks for the same orderly stop from code (after a failed run).
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason: str | None = None
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.reason == "interrupt":
            raise KeyboardInterrupt
        self.request("interrupt")

    def request(self, reason: str) -> None:
        if not self.requested:
            self.reason = reason
        elif reason == "interrupt":
            self.reason = reason
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def plan_runs(resolved: ResolvedRecipe, store: ResultStore) -> list[tuple[Cell, int, str]]:
    """Every runnable (cell, seed) with its store state: done, missing, corrupt, stale, or
    ``weightless``: stored, but its model file is not in the store and a run still to do
    needs it (the ``init`` of a later stage, the source of an artifact not yet mined, an
    ensemble's member). A store that keeps result documents only (``results/measured``)
    is one; such a run is trained again, and its document rewritten with the new run's."""
    cells = sorted(resolved.runnable_cells(), key=lambda c: c.stage)  # needed cells (and members) first
    state = {(cell.id, seed): store.status(resolved.id, cell.id, cell.hash, seed).state  # type: ignore[arg-type]
             for cell in cells for seed in resolved.seeds}
    for cell in reversed(cells):  # later stages first, so that a weightless run's own sources are marked too
        for seed in resolved.seeds:
            if state[(cell.id, seed)] == "done":
                continue
            for source in _weights_needed(store, cell, seed):
                key = (source.id, seed)
                if state.get(key) == "done" and not store.model_path(
                        resolved.id, source.id, source.hash, seed).is_file():  # type: ignore[arg-type]
                    state[key] = "weightless"
    return [(cell, seed, state[(cell.id, seed)]) for cell in cells for seed in resolved.seeds]


def _weights_needed(store: ResultStore, cell: Cell, seed: int) -> list[Cell]:
    """The cells whose stored weights a run of ``cell`` reads."""
    from xmrbench.runner.stages import artifact_state

    out = list(cell.members)
    if cell.needs is not None:
        if cell.needs.init is not None:
            out.append(cell.needs.init)
        out += [ref.source for ref in cell.needs.artifacts if artifact_state(store, ref, seed) != "done"]
    return out


def reproduce(
    resolved: ResolvedRecipe,
    store: ResultStore,
    *,
    device: torch.device | str,
    force: bool = False,
    reporter: Reporter | None = None,
    cache: DataCache | None = None,
    executor: Executor | None = None,
    keep_going: bool = False,
) -> Summary:
    """Run every missing (or, with ``force``, every) run of ``resolved``.

    ``executor`` decides where runs are computed (default: in this process, one
    after another). A failed run stops the others at their next epoch end unless
    ``keep_going``; either way the failures are in ``Summary.failed``. Runs held by
    another live process are waited for once nothing else can start, then taken over
    if that process stopped without finishing them. A run starts once the runs it needs
    (same seed) are stored: an ensemble after its members, a later training stage after
    its sources (``Cell.dependencies``); a twin cell is copied as soon as its source's
    run is stored.
    """
    from xmrbench.runner.executors import LocalExecutor

    reporter = reporter or SilentReporter()
    executor = executor or LocalExecutor(cache=cache)
    device_name = str(device)
    summary = Summary()
    store.clean_temporaries(resolved.id, older_than_s=STALE_TEMPORARY_S)
    index_trainings(store)  # a store from before training references (runner/adopt.py)
    repair_training_refs(store, resolved.id, older_than_s=STALE_TEMPORARY_S)  # a run killed while writing one
    store.save_resolved(resolved.to_dict())
    root = str(store.root.absolute())
    stages: dict[int, list[RunTask]] = {}
    planned = plan_runs(resolved, store)
    todo = [(cell, seed) for cell, seed, state in planned if force or state != "done"]
    # a member run scheduled with its ensemble keeps its matrices for it (runner/kept_sims.py)
    keep = {(m.id, seed) for cell, seed in todo for m in cell.members}
    # a twin is adopted after its source's stage when the source is stored or runs now
    scheduled = {(c.id, seed) for c, seed in todo}
    twin_of = {cid: src for cid, src in twins(resolved).items()
               if all((src.id, s) in scheduled or store.status(resolved.id, src.id, src.hash, s).state == "done"  # type: ignore[arg-type]
                      for s in resolved.seeds)}
    adopt_when: dict[tuple[str, int], list[Cell]] = {}  # a source run -> the twins to copy once it is stored
    adopt_now: list[tuple[Cell, int]] = []  # twins whose source is stored already
    for cell, seed, state in planned:
        if state == "done" and not force:
            summary.skipped.append((cell.id, seed))
            reporter.run_skip(cell, seed, "done")
            _tidy_finished_run(store, resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            if cell.members:
                release(store, resolved, cell.members, seed)  # left by an ensemble run that was killed
            continue
        if cell.id in twin_of:
            source_key = (twin_of[cell.id].id, seed)
            if source_key in scheduled:
                adopt_when.setdefault(source_key, []).append(cell)
            else:
                adopt_now.append((cell, seed))
            continue
        path = store.result_path(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
        if state in ("corrupt", "stale"):
            status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            reporter.warn(f"{status.path}: {status.problem}; recomputing")
            (summary.recomputed_corrupt if state == "corrupt" else summary.recomputed_stale).append(status.path)
        again = force or state == "weightless"
        if state == "weightless":
            reporter.warn(f"{path}: its model is not in the store and a later run needs it; training it again")
            summary.retrained_weightless.append(path)
        # the runs of this batch it needs: a twin's run is its source's (copied when that is stored)
        after = tuple(dict.fromkeys(key for dep in cell.dependencies
                                    if (key := (twin_of.get(dep.id, dep).id, seed)) in scheduled))
        task = RunTask(resolved, cell.id, seed, root, force=again, expect=store.identity(path) if again else None,
                       keep_sims=(cell.id, seed) in keep and not cell.members, after=after)
        stages.setdefault(cell.stage, []).append(task)
    batch = [t for stage in sorted(stages) for t in stages[stage]]
    tasks = [batch[i] for i in queue_order([t.key for t in batch], [t.after for t in batch],
                                           [bool(resolved.cell(t.cell_id).members) for t in batch])]

    def adopt(cell: Cell, seed: int) -> None:
        source = twin_of[cell.id]
        status = store.status(resolved.id, source.id, source.hash, seed)  # type: ignore[arg-type]
        if status.doc is not None:
            adopt_run(store, resolved, cell, seed, status.doc,
                      store.model_path(resolved.id, source.id, source.hash, seed))  # type: ignore[arg-type]
            summary.adopted.append((cell.id, seed))

    def stored(key: tuple[str, int]) -> None:
        for twin in adopt_when.get(key, []):
            adopt(twin, key[1])

    with _StopFlag() as stop:
        hooks = _Hooks(resolved, reporter, summary, stop, total=len(tasks), keep_going=keep_going, on_stored=stored)
        try:
            for cell, seed in adopt_now:
                adopt(cell, seed)
            if tasks:
                executor.run(tasks, device=device_name, hooks=hooks, stop=stop)
        except KeyboardInterrupt:
            stop.request("interrupt")
        summary.interrupted = stop.requested and stop.reason == "interrupt"
    settled = {*summary.ran, *summary.finished_elsewhere, *((f.cell_id, f.seed) for f in summary.failed)}
    summary.not_run = [t.key for t in tasks if t.key not in settled]
    return summary


def queue_order(keys: Sequence[Key], after: Sequence[tuple[Key, ...]], ensemble: Sequence[bool]) -> list[int]:
    """The order in which the executors' queue holds a batch given in stage order: the
    same, with each ensemble moved to just after the last of its members, so that it is
    handed out as soon as they are stored, before the runs queued behind them, and frees
    their kept matrices. An ensemble none of whose members is in the batch keeps its
    place. Returns the indexes of ``keys`` in the new order."""
    position = {k: i for i, k in enumerate(keys)}
    moved: dict[int, list[int]] = {}  # a member's index -> the ensembles placed after it
    for i, (needs, is_ensemble) in enumerate(zip(after, ensemble, strict=True)):
        inside = [position[k] for k in needs if k in position]
        if is_ensemble and inside:
            moved.setdefault(max(inside), []).append(i)
    placed = {i for ens in moved.values() for i in ens}
    out: list[int] = []
    for i in range(len(keys)):
        if i not in placed:
            out += [i, *moved.get(i, [])]
    return out


def _tidy_finished_run(store: ResultStore, recipe_id: str, cell_id: str, cell_hash: str, seed: int) -> None:
    """Remove the checkpoints and lock file of a stored run that nobody holds (its
    writer was killed between storing the result and removing them)."""
    path = store.lock_path(recipe_id, cell_id, cell_hash, seed)
    work = store.work_dir(recipe_id, cell_id, cell_hash, seed)
    if path.exists() or work.exists():
        lock = RunLock(path)
        if lock.acquire():
            store.finish_run(recipe_id, cell_id, cell_hash, seed)
            lock.release(remove=True)


#: Temporaries older than this are a dead writer's (no write of a result takes this long).
STALE_TEMPORARY_S = 3600.0


class _Hooks:
    """Turns executor events into reporter calls and the summary."""

    def __init__(self, resolved: ResolvedRecipe, reporter: Reporter, summary: Summary, stop: _StopFlag, *,
                 total: int, keep_going: bool, on_stored: Callable[[tuple[str, int]], None]):
        self.resolved = resolved
        self.reporter = reporter
        self.summary = summary
        self.stop = stop
        self.total = total
        self.keep_going = keep_going
        self.on_stored = on_stored  # called with a run's key once its result is in the store
        self.started_count = 0

    def started(self, task: RunTask) -> Events:
        index = self.started_count
        self.started_count += 1
        return self.reporter.run_start(self.resolved.cell(task.cell_id), task.seed, index, self.total)

    def retrying(self, task: RunTask, outcome: RunOutcome) -> None:
        self.reporter.warn(f"{outcome.message} (attempt {task.attempt}); retrying")

    def finished(self, task: RunTask, outcome: RunOutcome) -> None:
        cell = self.resolved.cell(task.cell_id)
        key = task.key
        if outcome.state == "ran":
            self.summary.ran.append(key)
            if outcome.doc is not None and outcome.doc.trained_by is not None:
                self.summary.reused_training.append(key)
            self.reporter.run_end(cell, task.seed, outcome.doc, Path(outcome.path))  # type: ignore[arg-type]
            self.on_stored(key)
        elif outcome.state == "done_elsewhere":
            self.summary.finished_elsewhere.append(key)
            self.reporter.run_skip(cell, task.seed, "finished by another process")
            self.on_stored(key)
        elif outcome.state == "busy":  # the executor's queue waits for it once nothing else can start
            self.summary.waited_for.append(key)
            self.reporter.warn(
                f"{task.label}: being computed by another process ({outcome.message}); "
                "waiting for it once nothing else can start"
            )
        elif outcome.state == "interrupted":
            pass  # its last epoch checkpoint is kept; listed in Summary.not_run
        else:
            failure = RunFailure(task.cell_id, task.seed, outcome.message or "failed", outcome.user_error,
                                 outcome.attempts, outcome.detail)
            self.summary.failed.append(failure)
            report = getattr(self.reporter, "run_failed", None)
            if report is not None:
                report(cell, task.seed, failure.message)
            if not self.keep_going:
                self.stop.request("failure")
