"""Progress of the verbs that train (reproduce, sweep, calibrate, check).

On a terminal: one bar over the runs, and one bar per run under way with its epoch, its
last training loss and the time it has left. That ETA comes from the stored durations of
earlier runs of the same cell (its other seeds, or the same row under another config)
where the store holds any, else from the pace of the run's epochs so far. Every
finished, skipped or failed run also prints one line; when the output is not a terminal
those lines are all that appears.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

from xmrbench.engine.train import Events
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.store.schema import ResultDoc
from xmrbench.store.store import ResultStore


def run_seconds(doc: ResultDoc) -> float:
    """How long a stored run took: training plus evaluation, in seconds."""
    return float(doc.timing.get("train_s", 0.0) + doc.timing.get("eval_s", 0.0))


def stored_durations(resolved: ResolvedRecipe, store: ResultStore) -> dict[str, list[float]]:
    """Durations of the stored runs of ``resolved``'s recipe, keyed by cell hash, and by
    ``cell:<id>`` and ``row:<id>`` for the runs of the same profile whatever their config."""
    out: dict[str, list[float]] = {}
    for _path, doc, _problem in store.iter_results(resolved.id):
        if doc is None:
            continue
        secs = run_seconds(doc)
        out.setdefault(doc.cell.hash, []).append(secs)
        if doc.recipe.profile == resolved.profile:
            out.setdefault(f"cell:{doc.cell.id}", []).append(secs)
            out.setdefault(f"row:{doc.cell.row}", []).append(secs)
    return out


def expected_seconds(durations: Mapping[str, list[float]], cell: Cell) -> float | None:
    """The median stored duration of ``cell``'s runs (the same hash, else the same cell id,
    else the same row), or None."""
    for key in (cell.hash or "", f"cell:{cell.id}", f"row:{cell.row.id}"):
        if durations.get(key):
            return statistics.median(durations[key])
    return None


def seconds_left(task: Task) -> float | None:
    """A bar's time left: what remains of its expected duration (field ``expected``) while
    it runs within it, else the pace of its completed steps, else None (nothing to go by)."""
    elapsed = task.elapsed
    if elapsed is None:
        return None
    expected = task.fields.get("expected")
    if expected is not None and elapsed < expected:
        return expected - elapsed
    if task.total and task.completed:
        return elapsed / task.completed * max(task.total - task.completed, 0)
    return None


def clock(seconds: float) -> str:
    """``seconds`` as h:mm:ss."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _EtaColumn(ProgressColumn):
    """``ETA h:mm:ss`` from :func:`seconds_left`."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        left = seconds_left(task)
        return Text(f"ETA {'-:--:--' if left is None else clock(left)}", style="progress.remaining")


class _EpochEvents:
    """One run's events, drawn on its bar."""

    def __init__(self, progress: Progress, task: int, expected: float | None):
        self.progress = progress
        self.task = task
        self.expected = expected
        self.started = False
        self.n_epochs = 0
        self.loss = ""

    def epoch_start(self, epoch: int, n_epochs: int, n_batches: int) -> None:
        if not self.started:  # a resumed run has only its remaining epochs to go
            self.started = True
            if self.expected is not None and n_epochs:
                self.progress.update(self.task, expected=self.expected * (n_epochs - epoch) / n_epochs)
        self.n_epochs = n_epochs
        self.progress.update(self.task, total=n_epochs, completed=epoch,
                             detail=f"epoch {epoch + 1}/{n_epochs}{self.loss}")

    def batch_end(self, batch: int, loss: float) -> None:
        pass

    def epoch_end(self, epoch: int, stats: dict[str, float]) -> None:
        self.loss = f" loss {stats['loss']:.4g}" if "loss" in stats else ""
        self.progress.update(self.task, completed=epoch + 1, detail=f"epoch {epoch + 1}/{self.n_epochs}{self.loss}")

    def warn(self, message: str) -> None:
        self.progress.console.print(f"warning: {message}", style="yellow", soft_wrap=True, highlight=False, markup=False)


class RichReporter:
    """Implements the runner's Reporter protocol with rich progress bars.

    ``resolved`` and ``store`` (both or neither) let the bars estimate each run's time
    left from the durations stored for its cell.
    """

    def __init__(self, console: Console, total_runs: int, *, quiet: bool = False,
                 resolved: ResolvedRecipe | None = None, store: ResultStore | None = None):
        self.console = console
        self.quiet = quiet
        self.resolved = resolved
        self.store = store
        self.durations: dict[str, list[float]] = {}
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=10),
            TextColumn("{task.fields[detail]}", table_column=Column(min_width=22, no_wrap=True)),
            _EtaColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.runs_task = self.progress.add_task("runs", total=total_runs, detail=f"0/{total_runs}")
        self.epoch_tasks: dict[tuple[str, int], int] = {}  # one bar per run under way (parallel executors)

    @property
    def live(self) -> bool:
        """Whether bars are drawn (not quiet, on a terminal)."""
        return not self.quiet and self.console.is_terminal

    def __enter__(self) -> RichReporter:
        if self.live and self.resolved is not None and self.store is not None:
            self.durations = stored_durations(self.resolved, self.store)
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run_start(self, cell: Cell, seed: int, index: int, total: int) -> Events:
        self._end_epochs(cell, seed)
        expected = expected_seconds(self.durations, cell)
        task = self.progress.add_task(f"  {cell.id} seed {seed}", total=1, completed=0, detail="starting",
                                      expected=expected)
        self.epoch_tasks[(cell.id, seed)] = task
        return _EpochEvents(self.progress, task, expected)

    def _end_epochs(self, cell: Cell, seed: int) -> None:
        task = self.epoch_tasks.pop((cell.id, seed), None)
        if task is not None:
            self.progress.remove_task(task)

    def _advance(self) -> None:
        self.progress.advance(self.runs_task)
        task = next(t for t in self.progress.tasks if t.id == self.runs_task)
        self.progress.update(self.runs_task, detail=f"{int(task.completed)}/{int(task.total or 0)}")

    def run_skip(self, cell: Cell, seed: int, why: str) -> None:
        if why == "done":  # stored before this command started: not counted in the bar
            return
        self._end_epochs(cell, seed)
        self._advance()
        if not self.quiet:
            self.console.print(f"[cyan]skip[/] {cell.id} seed {seed}: {why}")

    def run_failed(self, cell: Cell, seed: int, message: str) -> None:
        self._end_epochs(cell, seed)
        self._advance()
        if not self.quiet:
            self.console.print(f"[red]failed[/] {cell.id} seed {seed}", highlight=False)

    def run_end(self, cell: Cell, seed: int, doc: ResultDoc, path: Path) -> None:
        self._end_epochs(cell, seed)
        self._advance()
        if doc.resumed_from_epoch is None and doc.trained_by is None and cell.hash:  # a whole run: the next seeds' estimate
            self.durations.setdefault(cell.hash, []).append(run_seconds(doc))
        first = next(iter(doc.metrics))
        metrics = doc.metrics[first]
        # rsum for image-sentence retrieval; a label protocol reports mAP
        shown = (f"rsum {metrics['rsum']:.1f}" if "rsum" in metrics
                 else ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith("_map")) or "done")
        took = doc.timing.get("train_s", 0) + doc.timing.get("eval_s", 0)
        resumed = f", resumed at epoch {doc.resumed_from_epoch + 1}" if doc.resumed_from_epoch is not None else ""
        if doc.trained_by is not None:
            took, resumed = doc.timing.get("eval_s", 0), f", the model trained by {doc.trained_by}"
        if not self.quiet:
            self.console.print(
                f"[green]done[/] {cell.id} seed {seed}: {first} {shown} "
                f"(best dev epoch {doc.best_epoch}, {took:.0f}s{resumed})"
            )

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)
