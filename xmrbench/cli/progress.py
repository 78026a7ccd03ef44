"""Rich progress bars for reproduce: one bar over runs, one over the epochs of each run under way."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from xmrbench.engine.train import Events
from xmrbench.recipe.resolve import Cell
from xmrbench.store.schema import ResultDoc


class _EpochEvents:
    def __init__(self, progress: Progress, task: int, prefix: str = ""):
        self.progress = progress
        self.task = task
        self.prefix = prefix

    def epoch_start(self, epoch: int, n_epochs: int, n_batches: int) -> None:
        self.progress.update(self.task, total=n_epochs, completed=epoch, description=f"  {self.prefix}epoch {epoch + 1}/{n_epochs}")

    def batch_end(self, batch: int, loss: float) -> None:
        pass

    def epoch_end(self, epoch: int, stats: dict[str, float]) -> None:
        self.progress.update(
            self.task,
            completed=epoch + 1,
            description=f"  {self.prefix}epoch {epoch + 1}: loss {stats['loss']:.3f}, {_dev(stats)}",
        )

    def warn(self, message: str) -> None:
        self.progress.console.print(f"warning: {message}", style="yellow", soft_wrap=True, highlight=False, markup=False)


class RichReporter:
    """Implements the runner's Reporter protocol with rich progress bars."""

    def __init__(self, console: Console, total_runs: int, *, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.runs_task = self.progress.add_task("runs", total=total_runs)
        self.epoch_tasks: dict[tuple[str, int], int] = {}  # one bar per run under way (parallel executors)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run_start(self, cell: Cell, seed: int, index: int, total: int) -> Events:
        self.progress.update(self.runs_task, description=f"{cell.id} seed {seed}")
        self._end_epochs(cell, seed)
        task = self.progress.add_task(f"  {cell.id} seed {seed}", total=1)
        self.epoch_tasks[(cell.id, seed)] = task
        return _EpochEvents(self.progress, task, f"{cell.id} seed {seed}, ")

    def _end_epochs(self, cell: Cell, seed: int) -> None:
        task = self.epoch_tasks.pop((cell.id, seed), None)
        if task is not None:
            self.progress.remove_task(task)

    def run_skip(self, cell: Cell, seed: int, why: str) -> None:
        if why == "done":  # stored before this command started: not counted in the bar
            return
        self._end_epochs(cell, seed)
        self.progress.advance(self.runs_task)
        if not self.quiet:
            self.console.print(f"[cyan]skip[/] {cell.id} seed {seed}: {why}")

    def run_failed(self, cell: Cell, seed: int, message: str) -> None:
        self._end_epochs(cell, seed)
        self.progress.advance(self.runs_task)
        if not self.quiet:
            self.console.print(f"[red]failed[/] {cell.id} seed {seed}", highlight=False)

    def run_end(self, cell: Cell, seed: int, doc: ResultDoc, path: Path) -> None:
        self._end_epochs(cell, seed)
        self.progress.advance(self.runs_task)
        first = next(iter(doc.metrics))
        metrics = doc.metrics[first]
        # rsum for image-sentence retrieval; a label protocol reports mAP
        shown = (f"rsum {metrics['rsum']:.1f}" if "rsum" in metrics
                 else ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith("_map")) or "done")
        took = doc.timing.get("train_s", 0) + doc.timing.get("eval_s", 0)
        resumed = f", resumed at epoch {doc.resumed_from_epoch + 1}" if doc.resumed_from_epoch is not None else ""
        if not self.quiet:
            self.console.print(
                f"[green]done[/] {cell.id} seed {seed}: {first} {shown} "
                f"(best dev epoch {doc.best_epoch}, {took:.0f}s{resumed})"
            )

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)


def _dev(stats: dict[str, float]) -> str:
    """The dev score of an epoch: rsum (image-sentence) or mean mAP (label task)."""
    if "dev_rsum" in stats:
        return f"dev rsum {stats['dev_rsum']:.1f}"
    return f"dev mAP {stats.get('dev_avg_map', float('nan')):.3f}"
