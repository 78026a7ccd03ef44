"""Execution: run every (cell, seed) of a resolved recipe that the store does not hold yet.

Each run builds its dataset (shared between cells through a cache), trains and
evaluates through the engine, and writes one result document atomically. A
finished result is skipped unless ``force``; a corrupted or partial one is
reported and recomputed. The first Ctrl-C lets the current epoch finish and
checkpoint, then stops; a second one stops at once (the last epoch checkpoint
is still there). Either way a re-run resumes where it stopped.

Where the runs are computed is the executor's business (``runner/executors.py``:
in this process, a process pool, a Ray cluster). Every run is computed under its
lock in the store, so two ``reproduce`` processes on one recipe share the work: a
run that another live process holds is reported, and waited for at the end (then
taken over if that process stopped without finishing it).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from xmrbench.core.engine.evaluate import encode, fold_similarities, metrics_from_similarities
from xmrbench.core.engine.inputs import PreparedData
from xmrbench.core.engine.train import Events, NullEvents, RunOutput, train_and_evaluate
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.data.dataset import RetrievalData
from xmrbench.data.registry import DATASETS
from xmrbench.errors import StoreError
from xmrbench.recipe.config import DataConfig
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.runner.env import environment
from xmrbench.runner.fingerprint import run_fingerprint
from xmrbench.runner.worker import RunOutcome, RunTask
from xmrbench.store.schema import SCHEMA_VERSION, CellRef, DatasetRef, RecipeRef, ResultDoc
from xmrbench.store.store import ResultStore

if TYPE_CHECKING:
    from xmrbench.runner.executors import Executor


class DataCache:
    """Datasets and their model-ready preparations, shared by the cells of one process."""

    def __init__(self) -> None:
        self._data: dict[str, RetrievalData] = {}
        self._prepared: dict[tuple[str, str, str], PreparedData] = {}

    def data(self, cfg: DataConfig) -> RetrievalData:
        key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        if key not in self._data:
            self._data[key] = DATASETS[cfg.name](cfg)
        return self._data[key]

    def prepared(self, cfg: DataConfig, image_input: str, text_input: str) -> PreparedData:
        key = (json.dumps(cfg.model_dump(mode="json"), sort_keys=True), image_input, text_input)
        if key not in self._prepared:
            self._prepared[key] = PreparedData(self.data(cfg), cfg, image_input, text_input)
        return self._prepared[key]


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
    interrupted: bool = False
    finished_elsewhere: list[tuple[str, int]] = field(default_factory=list)  # stored by another process meanwhile
    waited_for: list[tuple[str, int]] = field(default_factory=list)  # held by another process when first tried
    failed: list[RunFailure] = field(default_factory=list)
    not_run: list[tuple[str, int]] = field(default_factory=list)  # left undone after a failure or a stop

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
    """Every runnable (cell, seed) with its store state: done, missing or corrupt."""
    out = []
    for cell in sorted(resolved.runnable_cells(), key=lambda c: bool(c.members)):  # ensembles last
        for seed in resolved.seeds:
            status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            out.append((cell, seed, status.state))
    return out


def run_one(
    resolved: ResolvedRecipe,
    cell: Cell,
    seed: int,
    *,
    store: ResultStore,
    cache: DataCache,
    device: torch.device,
    events: Events | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> tuple[ResultDoc, Path]:
    """Train and evaluate one (cell, seed) and write its result document."""
    if cell.members:
        return _run_ensemble(resolved, cell, seed, store=store, cache=cache, device=device)
    cfg = cell.config
    assert cfg is not None and cell.hash is not None
    image_input, text_input = _inputs(cfg)
    prepared = cache.prepared(cfg.data, image_input, text_input)
    work = store.work_dir(resolved.id, cell.id, cell.hash, seed)
    work.mkdir(parents=True, exist_ok=True)
    out = train_and_evaluate(
        cfg,
        seed,
        prepared,
        device=device,
        work_dir=work,
        events=events,
        label=f"{resolved.id}/{cell.id}/seed{seed}",
        stop_requested=stop_requested,
    )
    doc = _result_doc(resolved, cell, seed, out, cfg.to_dict(), cache.data(cfg.data), prepared, device)
    model_path = store.model_path(resolved.id, cell.id, cell.hash, seed)
    _save_model({"config": doc.config, "seed": seed, "state_dict": out.state_dict}, model_path)
    path = store.write(doc)
    store.finish_run(resolved.id, cell.id, cell.hash, seed)
    return doc, path


def _save_model(payload: dict[str, Any], path: Path) -> None:
    """Write the selected model's weights atomically (through a file object, so a full disk is an OSError).

    The payload must be plain (``check_plain``) so that ``load_member`` reads it
    with ``weights_only=True``.
    """
    from xmrbench.core.engine.train import check_plain

    check_plain(payload, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write the model weights ({exc.strerror or exc})", where=str(path)) from None


def _inputs(cfg) -> tuple[str, str]:
    params = cfg.model.params
    return getattr(params, "image_input", "global"), getattr(params, "text_input", "tokens")


def _result_doc(resolved, cell, seed, out: RunOutput, config: dict, data, prepared, device) -> ResultDoc:
    image_input, text_input = prepared.image_input, prepared.text_input
    protocols = {}
    for name in out.metrics:
        if name == "dev":
            continue
        split = prepared.split(PROTOCOLS[name].split)
        protocols[name] = run_fingerprint(
            name,
            dataset_name=data.name,
            dataset_fingerprint=data.fingerprint,
            dataset_info=data.info,
            split_images=split.n_images,
            captions_per_image=split.captions_per_image,
            config=cell.config.to_dict() if cell.config else config,
            text_input=text_input,
            image_input=image_input,
        )
    return ResultDoc(
        schema_version=SCHEMA_VERSION,
        recipe=RecipeRef(
            id=resolved.id,
            path=str(resolved.path),
            hash=resolved.hash,
            paper=resolved.recipe.paper,
            table=resolved.recipe.table,
            profile=resolved.profile,
        ),
        cell=CellRef(id=cell.id, label=cell.label, row=cell.row.id, point=cell.point, hash=cell.hash),
        seed=seed,
        config=config,
        dataset=DatasetRef(name=data.name, fingerprint=data.fingerprint, info=data.info),
        protocols=protocols,
        metrics=out.metrics,
        ranks=out.ranks,
        curves=out.curves,
        best_epoch=out.best_epoch,
        n_params=out.n_params,
        timing=out.timing,
        env=environment(device),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        resumed_from_epoch=out.resumed_from_epoch,
    )


def load_member(store: ResultStore, resolved: ResolvedRecipe, cell: Cell, seed: int, cache: DataCache, device: torch.device):
    """A finished run's selected model, rebuilt from its stored weights, in eval mode.

    The file is read with ``weights_only=True`` (``load_plain``): a file holding
    anything but tensors, numbers, strings and plain containers is refused with a
    one-line ``StoreError`` naming it, never unpickled.
    """
    from xmrbench.core.engine.train import load_plain
    from xmrbench.core.models.registry import MODELS

    path = store.model_path(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
    if not path.is_file():
        raise StoreError(f"no stored model for {cell.id!r} seed {seed}; run reproduce for it first", where=str(path))
    payload = load_plain(path, what="stored model", map_location="cpu")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StoreError("cannot read stored model: no state_dict of tensors", where=str(path))
    cfg = cell.config
    prepared = cache.prepared(cfg.data, *_inputs(cfg))  # type: ignore[union-attr]
    model = MODELS[cfg.model.name](cfg.model.params, prepared.dims)  # type: ignore[union-attr]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # other shapes or keys: another model's weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise StoreError(f"stored weights do not fit {cell.id!r} ({first})", where=str(path)) from None
    return model.to(device).eval(), prepared


def _run_ensemble(resolved, cell, seed, *, store, cache, device) -> tuple[ResultDoc, Path]:
    """Average the members' similarity matrices (same seed) and evaluate the average."""
    t0 = time.perf_counter()
    members = [load_member(store, resolved, m, seed, cache, device) for m in cell.members]
    cfg = cell.config
    eval_kw = dict(device=device, batch_size=cfg.eval.batch_size)

    def averaged(split_name: str, folds: int, max_images: int | None = None):
        total = None
        cpi = None
        for model, prepared in members:
            split = prepared.split(split_name, max_images=max_images)
            cpi = split.captions_per_image
            enc = encode(model, split, **eval_kw)
            sims = fold_similarities(model, split, enc, folds=folds, block_images=cfg.eval.block_images)
            total = sims if total is None else [a + b for a, b in zip(total, sims)]
        return metrics_from_similarities([s / len(members) for s in total], captions_per_image=cpi)

    metrics, ranks = {}, {}
    for name in cfg.eval.protocols:
        proto = PROTOCOLS[name]
        metrics[name], ranks[name] = averaged(proto.split, proto.folds)
    metrics["dev"], _ = averaged("dev", 1, cfg.eval.dev_images)
    out = RunOutput(
        metrics=metrics,
        ranks=ranks if cfg.eval.store_ranks else {},
        curves={},
        best_epoch=None,
        timing={"train_s": 0.0, "eval_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - t0},
        n_params=sum(sum(p.numel() for p in m.parameters()) for m, _ in members),
    )
    config = {"ensemble": {m.id: m.config.to_dict() for m in cell.members}}
    first_prepared = members[0][1]
    doc = _result_doc(resolved, cell, seed, out, config, cache.data(cfg.data), first_prepared, device)
    return doc, store.write(doc)


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
    another live process are waited for at the end, then taken over if that
    process stopped without finishing them. Ensembles run after their members.
    """
    from xmrbench.runner.executors import LocalExecutor

    reporter = reporter or SilentReporter()
    executor = executor or LocalExecutor(cache=cache)
    device_name = str(device)
    summary = Summary()
    store.clean_temporaries(resolved.id, older_than_s=STALE_TEMPORARY_S)
    store.save_resolved(resolved.to_dict())
    root = str(store.root.absolute())
    members: list[RunTask] = []
    ensembles: list[RunTask] = []
    for cell, seed, state in plan_runs(resolved, store):
        if state == "done" and not force:
            summary.skipped.append((cell.id, seed))
            reporter.run_skip(cell, seed, "done")
            continue
        path = store.result_path(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
        if state == "corrupt":
            status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            reporter.warn(f"{status.path}: {status.problem}; recomputing")
            summary.recomputed_corrupt.append(status.path)
        task = RunTask(resolved, cell.id, seed, root, force=force, expect=store.identity(path) if force else None)
        (ensembles if cell.members else members).append(task)
    with _StopFlag() as stop:
        hooks = _Hooks(resolved, reporter, summary, stop, total=len(members) + len(ensembles), keep_going=keep_going)
        try:
            for phase in (members, ensembles):
                if stop.requested or not phase:
                    continue
                executor.run(phase, device=device_name, hooks=hooks, stop=stop)
                waiting = hooks.take_busy()
                if waiting and not stop.requested:  # held elsewhere: wait for them, take over what is left
                    executor.run([t.again(wait=True) for t in waiting], device=device_name, hooks=hooks, stop=stop)
        except KeyboardInterrupt:
            stop.request("interrupt")
        summary.interrupted = stop.requested and stop.reason == "interrupt"
    settled = {*summary.ran, *summary.finished_elsewhere, *((f.cell_id, f.seed) for f in summary.failed)}
    summary.not_run = [t.key for t in (*members, *ensembles) if t.key not in settled]
    return summary


#: Temporaries older than this are a dead writer's (no write of a result takes this long).
STALE_TEMPORARY_S = 3600.0


class _Hooks:
    """Turns executor events into reporter calls and the summary."""

    def __init__(self, resolved: ResolvedRecipe, reporter: Reporter, summary: Summary, stop: _StopFlag, *,
                 total: int, keep_going: bool):
        self.resolved = resolved
        self.reporter = reporter
        self.summary = summary
        self.stop = stop
        self.total = total
        self.keep_going = keep_going
        self.started_count = 0
        self.busy: list[RunTask] = []

    def take_busy(self) -> list[RunTask]:
        out, self.busy = self.busy, []
        return out

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
            self.reporter.run_end(cell, task.seed, outcome.doc, Path(outcome.path))  # type: ignore[arg-type]
        elif outcome.state == "done_elsewhere":
            self.summary.finished_elsewhere.append(key)
            self.reporter.run_skip(cell, task.seed, "finished by another process")
        elif outcome.state == "busy":
            self.summary.waited_for.append(key)
            self.busy.append(task)
            self.reporter.warn(
                f"{task.label}: being computed by another process ({outcome.message}); waiting for it at the end"
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
