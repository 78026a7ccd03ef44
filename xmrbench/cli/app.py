"""The ``xmrbench`` command line: parse, call, map errors to exit codes. No logic here.

Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr, no traceback),
130 interrupted (results written so far are kept; re-run to resume).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from xmrbench.cli.completion import complete_recipe, complete_rows
from xmrbench.errors import UsageError, XmrbenchError

app = typer.Typer(
    name="xmrbench",
    help="Reproduce, compare and benchmark image-text cross-modal retrieval research.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Datasets: write the synthetic world to disk.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ResultsOpt = Annotated[Path, typer.Option("--results", help="Results store directory.")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="smoke (seconds), quick (minutes, CPU), full (paper setting).")]
SeedsOpt = Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2 (default: the profile's).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: KEY=VALUE (repeatable).")]
DataRootOpt = Annotated[Path | None, typer.Option("--data-root", help="Directory of real precomputed features.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local (in this process), process (a pool on this machine) or ray (a cluster).")]
JobsOpt = Annotated[int | None, typer.Option("--jobs", help="process: worker processes (default: CPU count); ray: runs at a time (default: the cluster's CPUs).")]
RetriesOpt = Annotated[int | None, typer.Option("--retries", help="process/ray: re-attempts of a run whose worker crashed or died (default 2).")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="ray: the cluster's address, e.g. 10.0.0.1:6379 or auto (default: start Ray on this machine).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="Torch threads per run (default: the CPUs this process may use; process: divided among the jobs; ray: 1).")]
KeepGoingOpt = Annotated[bool, typer.Option("--keep-going/--no-keep-going", help="After a failed run, compute the others anyway (default: stop them at their next epoch end).")]


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds {text!r}: expected non-negative integers")
    return seeds


def _overrides(items: list[str] | None, data_root: Path | None) -> dict:
    from xmrbench.recipe.resolve import parse_set

    out = parse_set(items or [])
    if data_root is not None:
        if not data_root.is_dir():
            raise UsageError(f"--data-root {data_root}: not a directory")
        out["data.root"] = str(data_root)
    return out


def _rows(text: str | None) -> list[str] | None:
    """``--rows a,b`` as a list (None when not given)."""
    return [r.strip() for r in text.split(",") if r.strip()] if text else None


RowsOpt = Annotated[
    str | None, typer.Option("--rows", help="Comma-separated row ids to run (default: every runnable row).",
                             autocompletion=complete_rows)
]
JsonOpt = Annotated[bool, typer.Option("--json/--no-json", help="Print one JSON document (docs/json.md).")]


def _resolve(
    recipe: str, profile: str, seeds: str | None, sets: list[str] | None, data_root: Path | None = None,
    rows: str | None = None,
):
    from xmrbench.recipe.resolve import resolve

    resolved = resolve(recipe, profile=profile, seeds=_seeds(seeds), overrides=_overrides(sets, data_root))
    if rows:
        resolved = resolved.restricted_to_rows(_rows(rows))
    for warning in resolved.warnings:
        err_console.print(f"[yellow]lint:[/] {warning}", highlight=False)
    return resolved


# ---------------------------------------------------------------------------
@app.command("list")
def list_cmd(results: ResultsOpt = Path("results"), profile: ProfileOpt = "quick", as_json: JsonOpt = False) -> None:
    """Recipes with their table, number of cells, and how many runs are done."""
    from xmrbench.cli.json_out import emit, list_payload

    doc = list_payload(results, profile)
    if as_json:
        emit("list", doc)
        return
    console.print(f"profile {profile}, results in {results}/; done: runs stored (a run: a cell x a seed)",
                  highlight=False)
    table = _table(_no_wrap("recipe"), _column("table"), _column("cells", justify="right"),
                   _column("runnable", justify="right"), _no_wrap("done", justify="right"))
    for r in doc["recipes"]:
        if not r["has_profile"]:
            table.add_row(r["id"], r["table"], "-", "-", "-")
            continue
        table.add_row(r["id"], r["table"], str(r["cells"]), str(r["runnable"]), f"{r['done']}/{r['runs']}")
    console.print(table)
    missing = [r["id"] for r in doc["recipes"] if not r["has_profile"]]
    if missing:
        _say(f"no {profile} profile: {', '.join(missing)}")
    console.print("paper and title: xmrbench show RECIPE; every field: xmrbench list --json", highlight=False)


def _no_wrap(header: str, **kwargs):
    """A column whose cells never wrap (ids, hashes, counts)."""
    return _column(header, no_wrap=True, **kwargs)


def _column(header: str, **kwargs):
    """A column that wraps at spaces and folds a word too long for it (nothing is cut off)."""
    from rich.table import Column

    return Column(header, overflow="fold", **kwargs)


def _table(*columns) -> Table:
    """A borderless table: a rule under the header, columns two spaces apart."""
    from rich import box

    return Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def _say(text: str, indent: str = "  ", first: str = "") -> None:
    """Print ``text`` wrapped at the console's width, the first line indented by ``first``,
    later ones by ``indent``; words (ids, paths) are never broken."""
    import textwrap

    lines = textwrap.wrap(text, width=console.width, initial_indent=first, subsequent_indent=indent,
                          break_long_words=False, break_on_hyphens=False) or [""]
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


@app.command()
def show(
    recipe: Annotated[str, typer.Argument(help="Recipe id or path to a recipe YAML file.",
                                          autocompletion=complete_recipe)],
    profile: ProfileOpt = "quick",
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="Print the resolved recipe as JSON "
                                          "(docs/json.md).")] = False,
) -> None:
    """The resolved cells of a recipe: ids, settings, hashes, the paper's numbers."""
    from rich.text import Text

    from xmrbench.cli.json_out import emit, show_payload
    from xmrbench.recipe.resolve import resolve

    resolved = resolve(recipe, profile=profile, overrides=_overrides(sets, None), require_data=False)
    if as_json:
        emit("show", show_payload(resolved))
        return
    r = resolved.recipe
    console.print(f"[bold]{r.id}[/]: {r.paper} {r.table}", highlight=False)
    console.print(Text(r.title))
    console.print(f"profile {profile}, seeds {', '.join(map(str, resolved.seeds))}", highlight=False)
    table = _table(_no_wrap("cell"), _no_wrap("hash"), _column("label, then the settings it changes"))
    for cell in resolved.cells:
        settings = ", ".join(f"{k}={v}" for k, v in {**cell.row.set, **cell.point}.items())
        if not cell.runnable:
            settings = f"not run: {cell.row.pending or 'printed by the paper only'}"
        about = Text(cell.label)
        if settings:
            about.append("\n" + settings, style="dim")
        table.add_row(cell.id, cell.hash or "-", about)
    console.print(table)
    console.print("full configs: xmrbench show RECIPE --json; paper numbers: xmrbench report RECIPE")
    for warning in resolved.warnings:
        console.print(f"[yellow]lint:[/] {warning}", highlight=False)


@app.command()
def candidates(
    recipe: Annotated[str, typer.Argument(help="Recipe id or path.", autocompletion=complete_recipe)],
    row: Annotated[str, typer.Option("--row", help="A row that samples offline negatives (its artifact is exported).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write i2t_NAME.npy and t2i_NAME.npy into.")],
    name: Annotated[str, typer.Option("--name", help="NAME of the files (the authors' release uses coco, f30k).")] = "train",
    seed: Annotated[int, typer.Option("--seed", help="The run's seed.")] = 0,
    profile: ProfileOpt = "quick",
    sets: SetOpt = None,
    data_root: DataRootOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Export the offline candidate lists a row reads (AOQ), in the layout of the authors'
    release (docs/formats/candidates.md); the row's method.candidate_files reads such files back."""
    from xmrbench.data.candidates import write_candidates
    from xmrbench.engine.train import load_plain
    from xmrbench.errors import StoreError, UsageError
    from xmrbench.store.store import ResultStore

    resolved = _resolve(recipe, profile, str(seed), sets, data_root, None)
    if row not in {c.id for c in resolved.cells}:
        raise UsageError(f"{resolved.id}: no cell {row!r}")
    cell = resolved.cell(row)
    arts = cell.needs.artifacts if cell.needs is not None else ()
    if not arts:
        raise UsageError(f"{resolved.id}: row {row!r} reads no artifact (no needs.artifacts)")
    ref = arts[0]
    store = ResultStore(results)
    path = store.artifact_path(ref.miner, ref.key(seed))
    if not path.is_file():
        raise StoreError(f"no stored {ref.miner} artifact of {ref.source.id} (seed {seed}); compute it with "
                         f"xmrbench reproduce {resolved.id} --rows {row} --seeds {seed} --profile {profile}",
                         where=str(path))
    tensors = load_plain(path, what="artifact", map_location="cpu").get("tensors", {})
    if "i2t" not in tensors or "t2i" not in tensors:
        raise StoreError("the artifact holds no i2t / t2i lists", where=str(path))
    a, b = write_candidates(out, name, tensors["i2t"], tensors["t2i"])
    console.print(f"wrote {a} {tuple(tensors['i2t'].shape)} and {b} {tuple(tensors['t2i'].shape)}")


@app.command()
def plan(
    recipe: Annotated[str, typer.Argument(help="Recipe id or path.", autocompletion=complete_recipe)],
    profile: ProfileOpt = "quick",
    seeds: SeedsOpt = None,
    sets: SetOpt = None,
    rows: RowsOpt = None,
    data_root: DataRootOpt = None,
    results: ResultsOpt = Path("results"),
    jobs: Annotated[int | None, typer.Option(
        "--jobs", help="Estimate the wall time with this many runs at once, as reproduce --jobs N "
                       "(default: this machine's CPU count).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What reproduce would run: the runs, which are done, and an estimate of the time left."""
    from xmrbench.cli.json_out import convergence_label, emit, plan_payload
    from xmrbench.runner.threads import available_cpus
    from xmrbench.store.store import ResultStore

    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: expected a positive number of runs at once")
    resolved = _resolve(recipe, profile, seeds, sets, data_root, rows)
    doc = plan_payload(resolved, ResultStore(results), results, jobs=jobs or available_cpus())
    if as_json:
        emit("plan", doc)
        return
    console.print(f"[bold]{resolved.id}[/], profile {profile}, seeds {', '.join(map(str, resolved.seeds))}; "
                  f"results in {results}/", highlight=False)
    table = _table(_no_wrap("cell"), _no_wrap("seed", justify="right"), _no_wrap("state"),
                   _no_wrap("estimate", justify="right"), _column("converged"))
    needs_lines: dict[str, str] = {}
    reuse_lines: list[str] = []
    for i, r in enumerate(doc["runs"]):
        if i and r["stage"] != doc["runs"][i - 1]["stage"]:
            table.add_section()  # a later stage: runs that need the ones above
        est = "" if not r["todo"] else (f"{r['estimate_s']:.0f}s" if r["estimate_s"] is not None else "?")
        if r["estimate_same_size"] is False:
            est += "*"
        if r["estimate_other_model"]:
            est += "~"
        table.add_row(r["cell"], str(r["seed"]), r["state"], est,
                      "" if r["todo"] else convergence_label(r["convergence"]))
        needs = r["needs"] or {"init": None, "artifacts": []}
        parts = [f"init {needs['init']}"] if needs["init"] else []
        parts += [f"{a['name']} ({a['miner']} of {a['source']})" for a in needs["artifacts"]]
        if parts:
            needs_lines[r["cell"]] = f"{r['cell']} (stage {r['stage']}) needs: {'; '.join(parts)}"
        if r["trained_by"]:
            why = "same training config" if r["trained_by_epochs"] is None else \
                f"stopped at its plateau after {r['trained_by_epochs']} epochs, below this cell's budget"
            reuse_lines.append(f"{r['cell']} seed {r['seed']}: evaluates the stored model of {r['trained_by']} ({why})")
    console.print(table)
    for line in reuse_lines:
        _say(line)
    for line in needs_lines.values():
        _say(line)
    for a in doc["artifacts"]:
        _say(f"artifact {a['key']}: {a['state']}; {a['miner']} of {a['source']}, seed {a['seed']}; "
             f"used by {', '.join(a['used_by'])}")
    total = doc["summary"]
    wall = total["wall"]
    eta = ("unknown (no timings stored yet)" if total["estimate_s"] is None else
           f"~{total['estimate_s'] / 60:.1f} min of run time, one run after another; "
           f"~{wall['estimate_s'] / 60:.1f} min with --jobs {wall['jobs']} (each run starts once the runs it "
           "needs are stored)")
    also = f" and {total['artifacts_todo']} artifact(s) to compute" if total["artifacts_todo"] else ""
    console.print(f"{total['todo']} of {total['runs']} runs to do{also}", highlight=False)
    console.print(f"estimated time left: {eta}\n  ({total['basis']})", highlight=False)
    if total["estimates_other_size"]:
        console.print(f"  * {total['estimates_other_size']} estimate(s) come from runs of the same model at another "
                      "size (its width or depth): a larger model takes longer", highlight=False)
    if total["estimates_other_model"]:
        console.print(f"  ~ {total['estimates_other_model']} estimate(s) come from other models' runs of this recipe "
                      "(no run of their own model is stored): a rough guess", highlight=False)
    if any(not r["todo"] for r in doc["runs"]):
        console.print("converged, with its reason: xmrbench plan RECIPE --json", highlight=False)


AllowUnconvergedOpt = Annotated[bool, typer.Option(
    "--allow-unconverged/--converged-only",
    help="Judge claims with runs that have not converged too (default: such pairs are untested; the report "
         "names the flag when it is given).")]


def _executor(name: str, jobs: int | None, retries: int | None, address: str | None, device: str,
              threads: int | None = None):
    """The executor and the device name its runs use (Ray resolves ``auto`` on the nodes)."""
    from xmrbench.engine.train import resolve_device
    from xmrbench.runner.executors import make_executor

    executor = make_executor(name, jobs=jobs, retries=retries, address=address, threads=threads)
    if name == "ray":
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device {device!r}: expected auto, cpu or cuda")
        return executor, device
    return executor, str(resolve_device(device))


def _execute(resolved, store, *, executor, device: str, force: bool, keep_going: bool, quiet: bool, total: int):
    """Run a resolved recipe with progress; end the command (exit 130, 2 or 1) if it did not finish."""
    from xmrbench.cli.progress import RichReporter
    from xmrbench.runner.driver import reproduce as run_recipe

    with RichReporter(console, total, quiet=quiet, resolved=resolved, store=store) as reporter:
        summary = run_recipe(resolved, store, device=device, force=force, reporter=reporter, executor=executor,
                             keep_going=keep_going)
    elsewhere = f", {len(summary.finished_elsewhere)} finished by another process" if summary.finished_elsewhere else ""
    if summary.interrupted:
        err_console.print(
            f"interrupted: {len(summary.ran)} run(s) finished and saved; run the same command again to resume",
            highlight=False,
        )
        raise typer.Exit(130)
    twins = f", {len(summary.adopted)} copied from an identical row" if summary.adopted else ""
    reused = (f" ({len(summary.reused_training)} evaluating a stored model trained with the same config)"
              if summary.reused_training else "")
    console.print(f"{len(summary.ran)} run(s) computed{reused}{twins}, {len(summary.skipped)} already done{elsewhere}")
    if summary.failed:
        if summary.not_run:
            console.print(f"{len(summary.not_run)} other run(s) not done; fix the error and run the same command "
                          "again (stored runs are kept, stopped ones resume from their last epoch)")
        shown = summary.failed if keep_going else summary.failed[:1]
        for i, failure in enumerate(shown):
            more = len(summary.failed) - len(shown)
            tail = f" ({more} more run(s) failed; --keep-going lists them all)" if more and i == len(shown) - 1 else ""
            err_console.print(f"error: {failure.message}{tail}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2 if any(f.user_error for f in summary.failed) else 1)
    return summary


@app.command()
def reproduce(
    recipe: Annotated[str, typer.Argument(help="Recipe id (e.g. two-branch-table2) or path to a recipe YAML file.",
                                          autocompletion=complete_recipe)],
    profile: ProfileOpt = "quick",
    seeds: SeedsOpt = None,
    sets: SetOpt = None,
    rows: RowsOpt = None,
    force: Annotated[bool, typer.Option("--force/--no-force", help="Recompute runs that are already done.")] = False,
    results: ResultsOpt = Path("results"),
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Print the paper-vs-ours table at the end.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", help="No progress bars.")] = False,
    executor: ExecutorOpt = "local",
    jobs: JobsOpt = None,
    retries: RetriesOpt = None,
    address: AddressOpt = None,
    threads: ThreadsOpt = None,
    keep_going: KeepGoingOpt = False,
    allow_unconverged: AllowUnconvergedOpt = False,
) -> None:
    """Train and evaluate every cell of a recipe (skipping finished runs), then report."""
    from xmrbench.runner.driver import plan_runs
    from xmrbench.store.store import ResultStore

    resolved = _resolve(recipe, profile, seeds, sets, data_root, rows)
    runner, dev = _executor(executor, jobs, retries, address, device, threads)
    store = ResultStore(results)
    runs = plan_runs(resolved, store)
    todo = sum(1 for *_, s in runs if s != "done" or force)
    console.print(
        f"[bold]{resolved.id}[/] ({resolved.recipe.paper}, {resolved.recipe.table}), profile {profile}: "
        f"{len(runs)} runs, {todo} to do, on {dev} ({executor} executor); results in {results}/"
    )
    try:
        _execute(resolved, store, executor=runner, device=dev, force=force, keep_going=keep_going, quiet=quiet, total=todo)
    finally:
        runner.close()
    if report:
        _print_reports([resolved.id], results, profile=profile, fmt="rich", out=None,
                       allow_unconverged=allow_unconverged)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A paper (e.g. two_branch) or a recipe id/path.")],
    profile: ProfileOpt = "quick",
    seeds: SeedsOpt = None,
    sets: SetOpt = None,
    rows: Annotated[str | None, typer.Option("--rows", help="Comma-separated row ids to sweep (default: all runnable).")] = None,
    shape: Annotated[str, typer.Option("--shape", help="A paper's own sweep parameters: grid (every combination), "
                                       "star (one at a time around the table's row) or auto (the paper's table).")] = "auto",
    results: ResultsOpt = Path("results"),
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run/--no-dry-run", help="Only show the cells.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", help="No progress bars.")] = False,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write the sweep's figure (PNG) into this "
                                               "directory: one panel per parameter swept one at a time.")] = None,
    executor: ExecutorOpt = "local",
    jobs: JobsOpt = None,
    retries: RetriesOpt = None,
    address: AddressOpt = None,
    threads: ThreadsOpt = None,
    keep_going: KeepGoingOpt = False,
) -> None:
    """Vary config parameters: xmrbench sweep two_branch --margin 0.05,0.1,0.2 (a grid over a
    recipe's rows) or xmrbench sweep aoq --h 200,500,1000 (a parameter the paper varies in a
    table of its own: that table's row, once per value, beside the paper's printed rows)."""
    from xmrbench.runner.driver import plan_runs
    from xmrbench.runner.sweep import build_sweep
    from xmrbench.store.store import ResultStore

    resolved = build_sweep(
        target, ctx.args, profile=profile, seeds=_seeds(seeds), overrides=_overrides(sets, data_root),
        rows=_rows(rows), shape=shape,
    )
    console.print(f"[bold]{resolved.id}[/]: {len(resolved.cells)} cells x {len(resolved.seeds)} seeds")
    for cell in resolved.cells:
        console.print(f"  {cell.id}  [{cell.hash}]", markup=False, highlight=False)
    if dry_run:
        return
    runner, dev = _executor(executor, jobs, retries, address, device, threads)
    store = ResultStore(results)
    todo = sum(1 for *_, s in plan_runs(resolved, store) if s != "done")
    try:
        _execute(resolved, store, executor=runner, device=dev, force=False, keep_going=keep_going, quiet=quiet, total=todo)
    finally:
        runner.close()
    from xmrbench.runner.sweep import headline_metric, sweep_series, sweep_table

    console.print(sweep_table(resolved, store))
    if plots is not None:
        from xmrbench.report.plots import star_sweep_figure
        from xmrbench.store.store import safe_name

        series, datasets = sweep_series(resolved, store)
        path = star_sweep_figure(series, title=resolved.recipe.title, metric=headline_metric(resolved.recipe),
                                 protocol=resolved.recipe.default_protocol, datasets=datasets,
                                 path=plots / f"{safe_name(resolved.id)}.png")
        console.print(f"wrote {path}" if path else "no swept parameter with stored results to plot")


def _print_reports(recipes: list[str], results: Path, *, profile: str | None, fmt: str, out: Path | None,
                   allow_unconverged: bool = False, labels: bool = False) -> None:
    from xmrbench.report.collect import collect
    from xmrbench.report.console import to_console
    from xmrbench.report.json_doc import to_json
    from xmrbench.report.render import to_csv, to_latex, to_markdown
    from xmrbench.store.store import ResultStore

    store = ResultStore(results)
    reports = [collect(r, store, profile=profile, allow_unconverged=allow_unconverged) for r in recipes]
    if fmt == "csv":
        text = to_csv(reports)
    elif fmt == "latex":
        text = "\n".join(to_latex(r) for r in reports)
    elif fmt == "json":
        text = to_json(reports)
    elif fmt == "rich" and out is None:
        text = to_console(reports, width=console.width, labels=labels)
    else:
        text = "\n".join(to_markdown(r) for r in reports)
    if out is not None:
        from xmrbench.store.store import atomic_write_text

        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command()
def report(
    recipes: Annotated[list[str] | None, typer.Argument(help="Recipe ids (default: every recipe with results).",
                                                        autocompletion=complete_recipe)] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown output.")] = False,
    latex: Annotated[bool, typer.Option("--latex", help="LaTeX (booktabs) output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output (one row per cell x metric).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document: every cell and claim with its "
                                          "evidence (schema: docs/json-report.md).")] = False,
    labels: Annotated[bool, typer.Option("--labels", help="Console table: the paper's row labels (wrapped) in "
                                         "place of row ids.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Which profile's results (default: the most paper-like present).")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Also write figures (PNG) into this directory.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write one self-contained HTML page (tables, claims, "
                                              "figures, notes) to this file instead.")] = None,
    results: ResultsOpt = Path("results"),
    allow_unconverged: AllowUnconvergedOpt = False,
    bench_runs: Annotated[bool, typer.Option("--bench", help="The stored `xmrbench bench` runs instead (the latest "
                                             "per device and size): each kernel against its floor and its peer.")] = False,
) -> None:
    """Paper | ours (mean ± std over seeds) | Δ for every cell, and a verdict per claim."""
    from xmrbench.recipe.load import recipe_index
    from xmrbench.store.store import ResultStore

    if html is not None and (markdown or latex or as_csv or as_json or out is not None):
        raise UsageError("--html writes its own page; leave out --markdown, --latex, --csv, --json and --out")
    if sum([markdown, latex, as_csv, as_json]) > 1:
        raise UsageError("choose one of --markdown, --latex, --csv, --json")
    fmt = "markdown" if markdown else "latex" if latex else "csv" if as_csv else "json" if as_json else "rich"
    if bench_runs:
        _report_bench(ResultStore(results), recipes, fmt=fmt, out=out, html=html)
        return
    if fmt == "rich" and out is not None:
        fmt = "markdown"
    if not recipes:
        have = set(ResultStore(results).recipe_ids())
        recipes = [rid for rid in recipe_index() if rid in have]
        if not recipes:
            raise UsageError(f"no results in {results}/ yet; run `xmrbench reproduce <recipe>` first")
    if html is not None:  # the page embeds the figures (also kept in --plots DIR if given)
        from xmrbench.report.collect import collect
        from xmrbench.report.html import to_html
        from xmrbench.report.plots import figure_pngs
        from xmrbench.runner.run import DataCache
        from xmrbench.runner.stored import stored_embedder, stored_scorer
        from xmrbench.store.store import atomic_write_text

        store = ResultStore(results)
        reports = [collect(rid, store, profile=profile, allow_unconverged=allow_unconverged) for rid in recipes]
        figures = {}
        for rep in reports:
            cache = DataCache()  # one per recipe, shared by its embedder and scorer
            figures[rep.recipe.id] = figure_pngs(rep, stored_embedder(store, cache), stored_scorer(store, cache),
                                                 out_dir=plots)
        atomic_write_text(html, to_html(reports, figures, source=f"results store {results}"))
        console.print(f"wrote {html}")
        return
    _print_reports(recipes, results, profile=profile, fmt=fmt, out=out, allow_unconverged=allow_unconverged,
                   labels=labels)
    if plots is not None:
        from xmrbench.report.collect import collect
        from xmrbench.report.plots import all_figures
        from xmrbench.runner.run import DataCache
        from xmrbench.runner.stored import stored_embedder, stored_scorer
        from xmrbench.store.store import ResultStore

        store = ResultStore(results)
        for rid in recipes:
            cache = DataCache()  # one per recipe, shared by its embedder and scorer
            embed, score = stored_embedder(store, cache), stored_scorer(store, cache)
            for path in all_figures(collect(rid, store, profile=profile), plots, embed, score):
                err_console.print(f"wrote {path}")


@app.command()
def evaluate(
    sims: Annotated[Path, typer.Option("--sims", help="Similarity matrix .npy: rows = images (queries), columns = captions (gallery).")],
    captions_per_image: Annotated[int, typer.Option("--captions-per-image", help="Caption j describes image j // this.")] = 5,
    protocol: Annotated[str, typer.Option("--protocol", help="all (the whole matrix) or 5fold (mean of 5 consecutive folds).")] = "all",
    query_labels: Annotated[Path | None, typer.Option("--query-labels", help="Labels of the rows (.npy): (N,) ints or (N, C) multi-hot. With labels: mAP over the whole list (map = i2t_map, t2i_map, avg_map), the released ACMR mAP@50 (*_map50) and precision at K = 50..1000 (*_pK).")] = None,
    gallery_labels: Annotated[Path | None, typer.Option("--gallery-labels", help="Labels of the columns (.npy).")] = None,
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="Print a JSON object.")] = False,
) -> None:
    """Evaluate your own similarity matrix with the same metrics the recipes use."""
    from xmrbench.runner.evaluate_file import evaluate_file

    metrics = evaluate_file(
        sims, captions_per_image=captions_per_image, protocol=protocol, query_labels=query_labels, gallery_labels=gallery_labels
    )
    if as_json:
        print(json.dumps(metrics))
    else:
        table = Table("metric", "value")
        for key, value in metrics.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)


@app.command()
def calibrate(
    recipe: Annotated[str, typer.Argument(help="Recipe id or path.", autocompletion=complete_recipe)],
    profile: ProfileOpt = "quick",
    seed: Annotated[int, typer.Option("--seed", help="The one seed each row trains with.")] = 0,
    max_epochs: Annotated[int, typer.Option("--max-epochs", help="The generous budget: training stops at the "
                                            "plateau or here.")] = 60,
    budget_s: Annotated[float, typer.Option("--budget-s", help="Seconds a run may take; longer rows are flagged.")] = 120.0,
    sets: SetOpt = None,
    rows: RowsOpt = None,
    results: Annotated[Path, typer.Option("--results", help="Store of the calibration runs (kept: a second "
                                          "call reuses them).")] = Path("results/calibration"),
    out: Annotated[Path | None, typer.Option("--out", help="Also write the table (Markdown) to this file.")] = None,
    device: DeviceOpt = "auto",
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", help="No progress bars.")] = False,
    executor: ExecutorOpt = "local",
    jobs: JobsOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Where each row's dev curve flattens: one run per row with early stopping at its plateau
    (max --max-epochs), tabulated with its seconds, rsum and the chance rsum."""
    from xmrbench.gate.calibrate import calibrated_cells, calibration_overrides, calibration_rows, to_markdown
    from xmrbench.recipe.resolve import resolve
    from xmrbench.store.store import ResultStore, atomic_write_text

    overrides = {**_overrides(sets, None), **calibration_overrides(max_epochs)}
    resolved = resolve(recipe, profile=profile, seeds=[seed], overrides=overrides)
    resolved = resolved.restricted_to_rows(_rows(rows) if rows else [c.row.id for c in calibrated_cells(resolved)])
    cells = calibrated_cells(resolved)
    runner, dev = _executor(executor, jobs, None, None, device, threads)
    store = ResultStore(results)
    from xmrbench.runner.driver import plan_runs

    todo = sum(1 for *_, s in plan_runs(resolved, store) if s != "done")
    console.print(f"[bold]{resolved.id}[/], profile {profile}: {len(cells)} row(s) to calibrate, {todo} run(s) to do "
                  f"(seed {seed}, at most {max_epochs} epochs, early stopping at the plateau); results in {results}/")
    try:
        _execute(resolved, store, executor=runner, device=dev, force=False, keep_going=True, quiet=quiet, total=todo)
    finally:
        runner.close()
    table = to_markdown(calibration_rows(resolved, store, seed), budget_s=budget_s, max_epochs=max_epochs)
    sys.stdout.write(table)
    if out is not None:
        atomic_write_text(out, table)
        console.print(f"wrote {out}")


@app.command()
def bench(
    names: Annotated[list[str] | None, typer.Argument(help="Benchmarks to run: machine, similarity, eval, simnet, "
                                                       "attention, adapt, mining, train, aoq-losses, data, contention "
                                                       "(default: all but aoq-losses, which train runs).")] = None,
    quick: Annotated[bool, typer.Option("--quick/--full", help="Small sizes (seconds) or full sizes (COCO 5K).")] = True,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    results: ResultsOpt = Path("results"),
    store: Annotated[bool, typer.Option("--store/--no-store", help="Keep the run in the results store "
                                        "(RESULTS/_bench/; `xmrbench report --bench` renders it).")] = True,
) -> None:
    """Time every kernel against its floor (this machine's ceilings, measured in the same run) and a peer's way."""
    from datetime import UTC, datetime

    from xmrbench.bench.registry import run_benchmarks
    from xmrbench.cli.json_out import bench_payload, emit, envelope, plain
    from xmrbench.engine.train import resolve_device
    from xmrbench.provenance.env import environment
    from xmrbench.report.bench import kernel_table
    from xmrbench.store.store import ResultStore

    dev = resolve_device(device)
    run = run_benchmarks(names, dev, quick=quick)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    payload = bench_payload(environment(dev), run, quick=quick, created=created)
    path = ResultStore(results).write_bench(plain(envelope("bench", payload))) if store else None
    if as_json:
        emit("bench", payload)
        return
    for res in run.results:
        _say(f"{res.name}: {res.description}")
        table = _table(_column("timing"), _no_wrap("median s", justify="right"), _no_wrap("rate", justify="right"))
        for t in res.timings:
            rate = f"{t.rate:.3g} {t.unit}/s" if t.rate else ""
            table.add_row(t.name, f"{t.seconds:.4f}", rate)
        console.print(table)
        for label, value in res.ratios.items():
            _say(f"{label}: {value:.3g}", first="  ", indent="    ")
        for note in res.notes:
            _say(note, first="  ", indent="    ")
        console.print()
    if payload["kernels"]:
        _say("kernels against their floors (docs/bench.md):")
        console.print(kernel_table(payload["kernels"], fmt="text", judged=not quick), highlight=False)
    if path is not None:
        _say(f"stored as {path.name} in {results}/_bench/; xmrbench report --bench --results {results}")


def _report_bench(store: Any, recipes: list[str] | None, *, fmt: str, out: Path | None, html: Path | None) -> None:
    from xmrbench.report.bench import render_bench
    from xmrbench.store.store import atomic_write_text

    if recipes or html is not None or fmt == "latex":
        raise UsageError("--bench renders the stored bench runs: give no recipes, and one of --markdown, --csv, --json")
    docs = store.bench_docs()
    if not docs:
        raise UsageError(f"no bench runs in {store.bench_dir()}/ yet; run `xmrbench bench` first")
    text = render_bench(docs, fmt="text" if fmt == "rich" and out is None else "markdown" if fmt == "rich" else fmt)
    if out is not None:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        print(text)


@app.command()
def check(
    recipes: Annotated[list[str] | None, typer.Argument(help="Recipe ids or paths (default: every recipe).",
                                                        autocompletion=complete_recipe)] = None,
    results: Annotated[Path | None, typer.Option("--results", help="Run into this store and keep it (default: a temporary one).")] = None,
    reference: Annotated[Path, typer.Option("--reference", help="Directory of the reference results.")] = Path("results/reference"),
    update: Annotated[bool, typer.Option("--update/--no-update", help="Record the references (every runnable cell, the reference seeds) instead of comparing.")] = False,
    rehash: Annotated[bool, typer.Option("--rehash/--no-rehash", help="Run nothing: give each reference cell its "
                                         "cell's current hash, keeping its numbers (a change that re-keys cells "
                                         "but not what they compute); the next check verifies them.")] = False,
    all_cells: Annotated[bool, typer.Option("--all/--ci-set", help="Check every runnable cell (default: the CI set, see the README).")] = False,
    rows: RowsOpt = None,
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers: kernels, learning, replay (default: all).")] = "kernels,learning,replay",
    device: DeviceOpt = "cpu",
    executor: Annotated[str, typer.Option("--executor", help="process (default: one worker per CPU), local or ray.")] = "process",
    jobs: JobsOpt = None,
    retries: RetriesOpt = None,
    address: AddressOpt = None,
    threads: Annotated[int, typer.Option("--threads", help="Torch threads per run (default 1: runs go in parallel instead; part of the replay fingerprint).")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", help="No progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="Print the findings as one JSON document "
                                          "(docs/json.md); progress goes to stderr.")] = False,
) -> None:
    """Regression gate: kernel goldens, learning checks of the smoke profile, bit-exact replay where it applies."""
    import shutil
    import tempfile

    from xmrbench.cli.json_out import check_payload, emit
    from xmrbench.errors import CheckFailed
    from xmrbench.gate.check import ReferenceRefused, run_check
    from xmrbench.runner.driver import plan_runs
    from xmrbench.store.store import ResultStore

    if reference.exists() and not reference.is_dir():
        raise UsageError(f"--reference {reference}: not a directory")
    if rehash:
        from xmrbench.gate.check import rehash_references

        if update:
            raise UsageError("--rehash keeps the recorded numbers and --update records new ones: choose one")
        lines = rehash_references(recipes, reference_dir=reference)
        for line in lines:
            _say(line)
        console.print(f"check --rehash: {len(lines)} reference(s) re-keyed; run xmrbench check to verify them")
        return
    chosen_layers = [x.strip() for x in layers.split(",") if x.strip()]
    runner, dev = _executor(executor, jobs, retries, address, device, threads)
    root = results if results is not None else Path(tempfile.mkdtemp(prefix="xmrbench-check-"))
    store = ResultStore(root)

    out = err_console if as_json else console  # with --json, stdout holds the document only

    def execute(resolved):
        todo = sum(1 for *_, s in plan_runs(resolved, store) if s != "done")
        out.print(f"[bold]{resolved.id}[/]: {todo} smoke run(s) to do", highlight=False)
        from xmrbench.cli.progress import RichReporter
        from xmrbench.runner.driver import reproduce as run_recipe

        with RichReporter(out, todo, quiet=quiet, resolved=resolved, store=store) as reporter:
            summary = run_recipe(resolved, store, device=dev, reporter=reporter, executor=runner, keep_going=True)
        if summary.interrupted:
            raise KeyboardInterrupt
        return summary

    try:
        gate = run_check(recipes, store=store, reference_dir=reference, update=update, execute=execute,
                         layers=chosen_layers, all_cells=all_cells, rows=_rows(rows))
    finally:
        runner.close()
        if results is None:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        emit("check", check_payload(gate, layers=chosen_layers, update=update))
    else:
        _print_gate(gate)
    if gate.refused:
        raise ReferenceRefused(f"{len(gate.refused)} cell(s) not recorded: {gate.refused[0]}")
    if not gate.passed:
        failing = sum(1 for r in gate.recipes if not r.passed)
        raise CheckFailed(
            f"check failed: {len(gate.kernel_failures)} golden(s) beyond tolerance, "
            f"{sum(len(r.learning_failures) for r in gate.recipes)} learning check(s) failed, "
            f"{sum(len(r.replay_mismatches) for r in gate.recipes)} metric(s) not replayed bit for bit, "
            f"{sum(len(r.problems) for r in gate.recipes)} other problem(s) in {failing} recipe(s)"
        )
    verb = "updated" if update else "passed"
    done = sum(1 for r in gate.recipes if r.state in ("checked", "updated"))
    out.print(f"check {verb}: {done} recipe(s), {sum(1 for r in gate.recipes if r.state == 'skipped')} skipped")


def _print_gate(gate) -> None:
    """The gate's findings: goldens, one line per recipe, then every failure. A finding that
    fails the gate is one line however long (CI logs are searched for them); notes wrap."""
    from tabulate import tabulate

    if gate.kernels is not None:
        bad = gate.kernel_failures
        _say(f"kernels: {gate.kernels_note}")
        print(f"kernels: {len(bad)} beyond tolerance")
        if bad:
            print(tabulate([[d.name, f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.atol:g}", f"{d.rtol:g}", d.problem or ""]
                            for d in bad], headers=["golden", "max |Δ|", "max rel", "atol", "rtol", "problem"],
                           tablefmt="github", disable_numparse=True))
    if not gate.recipes:
        return
    rows = []
    for r in gate.recipes:
        learning = f"{len(r.learning) - len(r.learning_failures)}/{len(r.learning)}" if r.learning else ""
        if r.replay is None or r.state != "checked":
            replay = ""
        elif r.replay:
            replay = f"{r.replay_compared - len(r.replay_mismatches)}/{r.replay_compared} identical"
        else:
            replay = "other environment"
        rows.append([r.recipe, r.state, r.runs or "", learning, replay])
    print(tabulate(rows, headers=["recipe", "state", "runs", "learning", "bit-exact replay"], tablefmt="github"))
    for r in gate.recipes:
        if r.note:
            _say(f"note: {r.recipe}: {r.note}")
    failed = [c for r in gate.recipes for c in r.learning_failures]
    if failed:  # a sentence per failure, not a table: it reads in an 80-column terminal too
        print("\nlearning checks that failed:")
        for c in failed:
            print(f"learning failed: {c.recipe}/{c.cell} {c.protocol}.{c.metric}: {c.summary()}")
    mismatches = [m for r in gate.recipes for m in r.replay_mismatches]
    for line in mismatches[:40]:
        print(f"not replayed: {line}")
    if len(mismatches) > 40:
        print(f"... and {len(mismatches) - 40} more metric(s) not replayed bit for bit")
    for r in gate.recipes:
        for line in r.not_gated:
            _say(f"not gated: {line}")
    for r in gate.recipes:
        for problem in r.problems:
            print(f"problem: {problem}")
    for line in gate.refused:
        print(f"refused: {line}")
    timing = gate_timing_line(gate.seconds)
    if timing:
        _say(timing)


def gate_timing_line(seconds: dict) -> str:
    """Where the gate's wall time went, on one line (GateResult.seconds)."""
    parts = []
    for phase in ("startup", "kernels", "prepare", "runs", "judge"):
        value = seconds.get(phase)
        if value is None:
            continue
        text = f"{phase} {value:,.0f}"
        if phase == "runs" and seconds.get("run_time"):
            text += f" (the runs' own {seconds['run_time']:,.0f}, summed over workers)"
        parts.append(text)
    return "time (s): " + ", ".join(parts) if parts else ""


@app.command()
def env(
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="The same object in the versioned envelope "
                                          "of docs/json.md, under env (without: the bare object).")] = False,
) -> None:
    """Versions and hardware (also recorded in every result), as JSON."""
    from xmrbench.cli.json_out import emit, env_payload
    from xmrbench.engine.train import resolve_device
    from xmrbench.provenance.env import environment

    info = environment(resolve_device(device))
    if as_json:
        emit("env", env_payload(info))
        return
    print(json.dumps(info, indent=1))


@data_app.command("synth")
def data_synth(
    size: Annotated[str, typer.Option("--size", help="tiny, small or medium.")] = "tiny",
    out: Annotated[Path, typer.Option("--out", help="Output directory (precomp layout).")] = Path("synthetic"),
    seed: Annotated[int, typer.Option("--seed", help="World seed.")] = 0,
    region_dim: Annotated[int, typer.Option("--region-dim", help="Region feature size.")] = 128,
    global_dim: Annotated[int, typer.Option("--global-dim", help="Global feature size.")] = 256,
) -> None:
    """Write a synthetic world to DIR in the SCAN precomp layout ({split}_ims.npy, {split}_caps.txt)."""
    from xmrbench.data.synthetic import write_synthetic

    if size not in ("tiny", "small", "medium"):
        raise UsageError(f"--size {size!r}: expected tiny, small or medium")
    if seed < 0 or region_dim < 1 or global_dim < 1:
        raise UsageError("--seed must be >= 0 and the dimensions >= 1")
    path = write_synthetic(out, size=size, seed=seed, region_dim=region_dim, global_dim=global_dim)
    console.print(f"wrote the {size} synthetic world (seed {seed}) to {path}")


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="A data directory (precomp, labelled or entities layout), a vocabulary json or a word-vector file.")],
    captions_per_image: Annotated[int, typer.Option("--captions-per-image", help="Captions per image.")] = 5,
    scan_all: Annotated[bool, typer.Option("--scan-all/--scan-sample", help="Scan every row of feature files over 2 GiB for NaN/inf (default: a fixed sample).")] = False,
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="Print the report as one JSON document "
                                          "(docs/json.md), problems included; the exit code is unchanged.")] = False,
) -> None:
    """Check a data directory: one line per problem (file, line or row, what is wrong) and exit 2, or a summary."""
    from xmrbench.cli.json_out import data_check_payload, emit
    from xmrbench.data.check import check_path

    if captions_per_image < 1:
        raise UsageError(f"--captions-per-image {captions_per_image}: expected >= 1")
    report = check_path(path, captions_per_image=captions_per_image, scan_all=scan_all)
    if as_json:
        emit("data-check", data_check_payload(report))
    if not report.ok:
        for problem in report.problems:
            err_console.print(f"error: {problem}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)
    if as_json:
        return
    console.print(f"{path}: {report.layout} layout, no problems found", highlight=False, markup=False, soft_wrap=True)
    for line in [*report.summary, *(f"note: {n}" for n in report.notes)]:
        _say(line, first="  ", indent="    ")


def _given_value(exc) -> str | None:
    """The command-line value of the option a BadParameter error is about, if it was given."""
    param = getattr(exc, "param", None)
    opts = getattr(param, "opts", None) or []
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(opt + "="):
                return arg[len(opt) + 1:]
    return None


def main() -> None:
    """Console entry point: every user mistake ends as one line on stderr (exit 2)."""
    try:  # compatibility shim: newer typer releases vendor click as typer._click, older ones use click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    from xmrbench.runner.threads import prepare_environment

    prepare_environment()  # before anything loads torch's OpenMP runtime
    try:
        code = app(standalone_mode=False, prog_name="xmrbench")
    except XmrbenchError as exc:
        err_console.print(f"error: {exc.one_line()}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click_exc.NoArgsIsHelpError as exc:  # a bare group: its help, as before
        print(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(exc.exit_code)
    except click_exc.UsageError as exc:  # unknown option, bad value, missing argument (click's usage box is 4 lines)
        where = exc.ctx.command_path if exc.ctx is not None else "xmrbench"
        text = " ".join(exc.format_message().split())
        value = _given_value(exc)
        if value is not None:
            text = f"{text} (got {value!r})"
        err_console.print(f"error: {where}: {text} (see {where} --help)", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except click_exc.ClickException as exc:
        err_console.print(f"error: {' '.join(exc.format_message().split())}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
