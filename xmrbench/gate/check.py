"""``xmrbench check``: the regression gate, in three layers (``docs/gate.md``).

1. **kernels** — every loss (value and gradient), similarity kernel, model similarity,
   metric and claim statistic on fixed inputs against ``results/reference/goldens.json``,
   within tolerances that hold on any CPU (:mod:`xmrbench.gate.goldens`);
2. **learning** — the ``smoke`` profile of every runnable cell (the CI set by default,
   every cell with ``all_cells``), trained over the gate seeds; the mean of the headline
   metric must lie within the tolerance derived from the reference's seed spread, and on
   the right side of the learning bar (:mod:`xmrbench.gate.learning`);
3. **replay** — where the environment fingerprint matches the reference's exactly (CPU
   model and instruction-set flags, torch build and CPU kernels, numpy's BLAS, thread
   count, versions, device), every metric of every seed must be bit-identical.

``update`` records the references instead (over the reference seeds, every runnable
cell) and refuses a cell whose band is not clearly above chance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.errors import StoreError, UsageError, XmrbenchError
from xmrbench.gate import chance as C
from xmrbench.gate.learning import (
    ALPHA,
    BAR,
    FLOOR_QUERIES,
    GATE_SEEDS,
    REFERENCE_SEEDS,
    LearningCheck,
    band_problem,
    fmt,
    tolerance,
)
from xmrbench.gate.references import read_reference, reference_path, write_reference
from xmrbench.recipe.resolve import Cell, ResolvedRecipe, resolve
from xmrbench.runner.adopt import adopt_run
from xmrbench.store.schema import ResultDoc
from xmrbench.store.store import ResultStore

PROFILE = "smoke"
GOLDENS_FILE = "goldens.json"  # layer 1's file in the reference directory (xmrbench.gate.goldens)
LAYERS = ("kernels", "learning", "replay")
#: What must be equal for bit-exact replay (see ``xmrbench env``).
REPLAY_KEYS = (
    "machine", "cpu", "cpu_flags", "torch_cpu_capability", "torch_build", "numpy_blas", "torch_threads",
    "python", "torch", "numpy", "device",
)


class ReferenceRefused(XmrbenchError):
    """``check --update`` would record a reference that cannot tell a trained model from an untrained one."""


# ---------------------------------------------------------------------------------
# which cells the gate runs


def gate_cells(resolved: ResolvedRecipe, *, all_cells: bool) -> list[Cell]:
    """The runnable cells the gate judges (declared ``not_gated`` cells left out).

    The CI set (``all_cells=False``): every runnable row, or the recipe's ``ci_rows`` when
    it names some; of a row crossed with grid or zip axes, only its first and last gated
    point. ``all_cells``: every runnable cell.
    """
    gated = [c for c in resolved.runnable_cells() if not resolved.not_gated(c)]
    if all_cells:
        return gated
    if resolved.recipe.ci_rows:
        gated = [c for c in gated if c.row.id in resolved.recipe.ci_rows]
    by_row: dict[str, list[Cell]] = {}
    for cell in gated:
        by_row.setdefault(cell.row.id, []).append(cell)
    chosen = {c.id for cells in by_row.values()
              for c in (cells if len(cells) <= 2 or not cells[0].point else [cells[0], cells[-1]])}
    return [c for c in gated if c.id in chosen]


def cells_to_run(resolved: ResolvedRecipe, judged: Sequence[Cell]) -> list[Cell]:
    """``judged`` and every cell they depend on: the members of its ensembles and the
    earlier training stages they read (a first round, say), transitively; such a cell
    runs even when it is not gated itself."""
    ids: set[str] = set()
    todo = list(judged)
    while todo:
        cell = todo.pop()
        if cell.id not in ids:
            ids.add(cell.id)
            todo.extend(cell.dependencies)
    return [c for c in resolved.runnable_cells() if c.id in ids]


def replay_env(env: dict[str, Any]) -> dict[str, Any]:
    return {k: env.get(k) for k in REPLAY_KEYS}


# ---------------------------------------------------------------------------------
# results


@dataclass
class CellRuns:
    """The stored runs of one cell: per seed, the metrics and the protocols' split sizes."""

    cell: Cell
    metrics: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # seed -> protocol -> metric
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # protocol -> images, captions_per_image, folds
    env: dict[str, Any] = field(default_factory=dict)


def collect_runs(resolved: ResolvedRecipe, cells: Sequence[Cell], store: ResultStore) -> list[CellRuns]:
    out = []
    for cell in cells:
        runs = CellRuns(cell)
        for seed in resolved.seeds:
            status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            if status.doc is None:
                continue
            runs.metrics[seed] = status.doc.metrics
            runs.env = runs.env or status.doc.env
            for proto, fp in status.doc.protocols.items():
                runs.splits[proto] = {"images": int(fp["images"]), "captions_per_image": int(fp["captions_per_image"]),
                                      "folds": int(fp["folds"])}
        out.append(runs)
    return out


class RunPool:
    """Runs already computed in the gate's store, by (cell hash, seed): a cell shared by
    several recipes is trained once and its result (and model) adopted by the others."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, int], tuple[ResultDoc, Path]] = {}

    def adopt(self, resolved: ResolvedRecipe, cells: Sequence[Cell], store: ResultStore) -> int:
        adopted = 0
        for cell in cells:
            if cell.members:
                continue  # an ensemble is evaluated from its members' models (cheap)
            for seed in resolved.seeds:
                src = self._done.get((cell.hash, seed))  # type: ignore[arg-type]
                if src is None or store.status(resolved.id, cell.id, cell.hash, seed).state == "done":  # type: ignore[arg-type]
                    continue
                adopt_run(store, resolved, cell, seed, *src)
                adopted += 1
        return adopted

    def record(self, resolved: ResolvedRecipe, cells: Sequence[Cell], store: ResultStore) -> None:
        for cell in cells:
            if cell.members:
                continue
            for seed in resolved.seeds:
                status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
                if status.doc is not None:
                    self._done.setdefault((cell.hash, seed), (  # type: ignore[arg-type]
                        status.doc, store.model_path(resolved.id, cell.id, cell.hash, seed)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# recording


def _expect(resolved: ResolvedRecipe, cell: Cell) -> tuple[str, str | None]:
    why = resolved.near_chance(cell)
    return ("near_chance", why) if why else ("learns", None)


def reference_doc(resolved: ResolvedRecipe, runs: Sequence[CellRuns]) -> tuple[dict[str, Any], list[str]]:
    """The reference document of ``runs`` and one line per cell that cannot be recorded."""
    refused: list[str] = []
    cells = []
    env: dict[str, Any] = {}
    for cr in runs:
        cell = cr.cell
        missing = [s for s in resolved.seeds if s not in cr.metrics]
        if missing:
            refused.append(f"{resolved.id}: {cell.id}: no result for seed(s) {', '.join(map(str, missing))}")
            continue
        env = env or replay_env(cr.env)
        expect, why = _expect(resolved, cell)
        checks = {}
        left_out = resolved.not_gated_protocols(cell)
        for proto, split in sorted(cr.splits.items()):
            if proto in left_out:  # declared: its spread allows no band above the bar
                continue
            first = cr.metrics[resolved.seeds[0]][proto]
            metric = C.headline_metric(first)
            values = [float(cr.metrics[s][proto][metric]) for s in resolved.seeds]
            proto_runs = [cr.metrics[s][proto] for s in resolved.seeds]
            chance = C.chance_level(metric, **split, runs=proto_runs)
            floor = FLOOR_QUERIES * C.resolution(metric, **split, runs=proto_runs)
            tol = tolerance(values, n_gate=len(GATE_SEEDS), floor=floor)
            mean = float(np.mean(values))
            problem = band_problem(expect=expect, mean=mean, tol=tol, bar=BAR * chance, chance=chance, metric=metric)
            if problem:
                refused.append(f"{resolved.id}: row {cell.row.id!r} (cell {cell.id}): {proto} {metric} "
                               f"{fmt(mean, metric)} ± {fmt(float(np.std(values, ddof=1)), metric)} over seeds "
                               f"{_seeds(resolved.seeds)}: {problem}")
            checks[proto] = {
                "metric": metric, **split, "values": values, "mean": mean,
                "sd": float(np.std(values, ddof=1)), "floor": floor, "tolerance": tol, "chance": chance,
                "bar": BAR * chance,
            }
        cells.append({
            "cell": cell.id, "hash": cell.hash, "expect": expect, "why": why, "checks": checks,
            "runs": {str(s): cr.metrics[s] for s in resolved.seeds},
        })
    doc = {
        "recipe": resolved.id,
        "profile": resolved.profile,
        "seeds": list(resolved.seeds),
        "rule": {"alpha": ALPHA, "bar": BAR, "floor_queries": FLOOR_QUERIES, "gate_seeds": list(GATE_SEEDS)},
        "env": env,
        "cells": cells,
    }
    return doc, refused


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


# ---------------------------------------------------------------------------------
# comparing


@dataclass
class RecipeCheck:
    recipe: str
    state: str  # "checked", "updated", "skipped", "failed", "refused"
    note: str = ""
    runs: int = 0
    replay: bool | None = None  # bit-exact replay applied (same environment)
    learning: list[LearningCheck] = field(default_factory=list)
    replay_compared: int = 0
    replay_mismatches: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each: missing runs or references, failed runs
    not_gated: list[str] = field(default_factory=list)  # one line each: declared cells the gate does not judge
    # wall seconds of this recipe's phases (see GateResult.seconds): prepare, runs, run_time, judge
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def learning_failures(self) -> list[LearningCheck]:
        return [c for c in self.learning if not c.passed]

    @property
    def passed(self) -> bool:
        return (self.state in ("checked", "updated", "skipped") and not self.problems and not self.learning_failures
                and not self.replay_mismatches)


def compare(resolved: ResolvedRecipe, reference: dict[str, Any], runs: Sequence[CellRuns], *,
            layers: Sequence[str]) -> RecipeCheck:
    """Compare this run's cells with a reference document (learning and, where it applies, replay)."""
    rid = resolved.id
    result = RecipeCheck(rid, "checked", runs=sum(len(cr.metrics) for cr in runs))
    ref_cells = {c["cell"]: c for c in reference["cells"]}
    envs = {tuple(sorted(replay_env(cr.env).items())) for cr in runs if cr.metrics}
    same_env = len(envs) == 1 and dict(next(iter(envs))) == replay_env(reference["env"])
    result.replay = same_env and "replay" in layers
    for cr in runs:
        cell = cr.cell
        ref = ref_cells.get(cell.id)
        if ref is None:
            result.problems.append(f"{rid}: {cell.id}: no reference (a new cell; record it with xmrbench check --update {rid})")
            continue
        if ref["hash"] != cell.hash:
            result.problems.append(f"{rid}: {cell.id}: its config changed since the reference was recorded "
                                   f"(hash {ref['hash']} -> {cell.hash}); re-record with xmrbench check --update {rid}")
            continue
        missing = [s for s in resolved.seeds if s not in cr.metrics]
        if missing:
            result.problems.append(f"{rid}: {cell.id}: no result for seed(s) {_seeds(missing)}")
            continue
        expect, _why = _expect(resolved, cell)
        if expect != ref["expect"]:
            result.problems.append(f"{rid}: {cell.id}: the recipe now says {expect!r}, the reference {ref['expect']!r}; "
                                   f"re-record with xmrbench check --update {rid}")
            continue
        if "learning" in layers:
            left_out = resolved.not_gated_protocols(cell)
            for proto in sorted((set(cr.splits) | set(ref["checks"])) - set(left_out)):
                check = ref["checks"].get(proto)
                if check is None or proto not in cr.splits:
                    side = "the reference" if check is None else "this run"
                    result.problems.append(f"{rid}: {cell.id}: protocol {proto!r} is missing from {side}")
                    continue
                metric = check["metric"]
                values = tuple(float(cr.metrics[s][proto][metric]) for s in resolved.seeds)
                result.learning.append(LearningCheck(
                    rid, cell.id, proto, metric, expect, check["chance"], check["bar"], check["mean"],
                    check["tolerance"], values))
        if result.replay:
            for seed in resolved.seeds:
                ref_run = ref["runs"].get(str(seed))
                if ref_run is None:
                    result.problems.append(f"{rid}: {cell.id}: seed {seed} is not in the reference")
                    continue
                now = cr.metrics[seed]
                for proto in sorted(set(now) | set(ref_run)):
                    for metric in sorted(set(now.get(proto, {})) | set(ref_run.get(proto, {}))):
                        a, b = ref_run.get(proto, {}).get(metric), now.get(proto, {}).get(metric)
                        result.replay_compared += 1
                        if a != b:
                            result.replay_mismatches.append(
                                f"{rid}: {cell.id} seed{seed}: {proto}.{metric} {a!r} -> {b!r}")
    gated = {c.id for c in resolved.cells if c.runnable and not resolved.not_gated(c)}  # not only those run now
    stale = sorted(set(ref_cells) - gated)
    for cid in stale:
        result.problems.append(f"{rid}: {cid}: in the reference but no longer a runnable cell; "
                               f"re-record with xmrbench check --update {rid}")
    return result


# ---------------------------------------------------------------------------------
# the gate


def check_targets(names: Sequence[str] | None) -> list[str | Path]:
    """The recipes to check: the named ones (ids or paths), else every recipe in ``recipes/``."""
    from xmrbench.recipe.load import recipe_index

    if names:
        return list(names)
    return list(recipe_index().values())


@dataclass
class GateResult:
    recipes: list[RecipeCheck]
    kernels: list[Any] | None = None  # GoldenDiff per golden, None when the layer did not run
    kernels_note: str = ""
    refused: list[str] = field(default_factory=list)  # update: one line per cell that was not recorded
    # where the gate's wall time went, in seconds: startup (process start to the gate:
    # interpreter, imports, argument parsing; None where /proc is absent), kernels,
    # prepare (loading, resolving and choosing cells), runs (computing the missing runs,
    # wall), run_time (the runs' own training and evaluation, summed over workers), judge
    # (collecting runs and comparing them with the references)
    seconds: dict[str, float | None] = field(default_factory=dict)

    def add_seconds(self, phase: str, secs: float) -> None:
        self.seconds[phase] = (self.seconds.get(phase) or 0.0) + secs

    @property
    def kernel_failures(self) -> list[Any]:
        return [d for d in self.kernels or [] if d.beyond]

    @property
    def passed(self) -> bool:
        return not self.kernel_failures and all(r.passed for r in self.recipes)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _run_time(resolved: ResolvedRecipe, store: ResultStore, summary: Any) -> float:
    """The summed training and evaluation seconds of the runs ``summary`` computed (each
    run's own ``timing.wall_s``), to set against the wall time of computing them."""
    total = 0.0
    for cell_id, seed in getattr(summary, "ran", []):
        cell = resolved.cell(cell_id)
        status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
        if status.doc is not None:
            total += float(status.doc.timing.get("wall_s", 0.0))
    return total


def run_kernels(reference_dir: Path, *, update: bool) -> tuple[list[Any] | None, str]:
    """Layer 1: compute the goldens and compare them with (or, with ``update``, write) the stored file."""
    from xmrbench.gate import goldens as G

    path = reference_dir / G.GOLDENS_FILE
    current = G.compute_goldens()
    if update:
        G.write_goldens(path, current)
        return [], f"wrote {len(current)} goldens to {path}"
    diffs = G.compare_goldens(G.read_goldens(path), current)
    return diffs, f"{len(diffs)} goldens compared with {path}"


def rehash_references(names: Sequence[str] | None, *, reference_dir: Path) -> list[str]:
    """Give each reference cell the current hash of its cell, keeping its numbers; one line
    per recipe that changed.

    For a change that re-keys cells without changing what they compute (a hash that
    covers a new field at its default, a stage that names its source another way): the
    references then need no new recording. Nothing is run, so nothing is verified here;
    the next ``check`` is the verification (bit-exact replay in the recording
    environment, the learning bands everywhere). A cell whose row is gone, or whose
    ``expect`` changed, is left for ``check --update``.
    """
    from xmrbench.recipe.load import load_recipe

    lines = []
    for recipe, path in (load_recipe(target) for target in check_targets(names)):
        ref_path = reference_path(reference_dir, recipe.id)
        if PROFILE not in recipe.profiles or not ref_path.is_file():
            continue
        doc = read_reference(ref_path)
        resolved = resolve(recipe, profile=PROFILE, path=path, seeds=list(doc["seeds"]))
        current = {c.id: c for c in resolved.runnable_cells()}
        changed = []
        for entry in doc["cells"]:
            cell = current.get(entry["cell"])
            if cell is None or cell.hash == entry["hash"] or _expect(resolved, cell)[0] != entry["expect"]:
                continue
            changed.append(f"{entry['cell']} {entry['hash']} -> {cell.hash}")
            entry["hash"] = cell.hash
        if changed:
            write_reference(ref_path, {k: v for k, v in doc.items() if k not in ("kind", "version")})
            lines.append(f"{recipe.id}: {len(changed)} cell(s) re-keyed: " + ", ".join(changed))
    return lines


def run_check(
    names: Sequence[str] | None,
    *,
    store: ResultStore,
    reference_dir: Path,
    update: bool,
    execute: Callable[[ResolvedRecipe], Any],
    layers: Sequence[str] = LAYERS,
    all_cells: bool = False,
    rows: Sequence[str] | None = None,
) -> GateResult:
    """Run the gate's layers on the target recipes (see the module docstring).

    ``execute(resolved)`` computes the missing runs of ``resolved`` into ``store`` and
    returns a summary with ``failed`` (:func:`xmrbench.runner.driver.reproduce`).
    With ``update``, a recipe with a cell that is not clearly above (or, declared, below)
    chance is not recorded: its lines are in ``GateResult.refused`` (the command line
    exits 2 on them, :class:`ReferenceRefused`); every other recipe is recorded.
    """
    from xmrbench.recipe.load import load_recipe

    unknown = [name for name in layers if name not in LAYERS]
    if unknown or not layers:
        raise UsageError(f"--layers: unknown layer {unknown[0]!r}; layers: {', '.join(LAYERS)}" if unknown
                         else f"--layers: name at least one of {', '.join(LAYERS)}")
    if update and rows:
        raise UsageError("--update records every runnable cell of a recipe; drop --rows")
    gate = GateResult([])
    gate.seconds["startup"] = process_age_s()
    clock = time.perf_counter()
    targets = [load_recipe(target) for target in check_targets(names)]  # bad names fail before any work
    gate.add_seconds("prepare", time.perf_counter() - clock)
    if "kernels" in layers:
        clock = time.perf_counter()
        gate.kernels, gate.kernels_note = run_kernels(reference_dir, update=update)
        gate.add_seconds("kernels", time.perf_counter() - clock)
    if "learning" not in layers and "replay" not in layers:
        return gate
    pool = RunPool()
    seen: set[str] = set()
    refused = gate.refused
    seeds = REFERENCE_SEEDS if update else GATE_SEEDS
    for recipe, path in targets:
        seen.add(recipe.id)
        secs: dict[str, float] = {}
        clock = time.perf_counter()
        if PROFILE not in recipe.profiles:
            gate.recipes.append(RecipeCheck(recipe.id, "skipped", note=f"no {PROFILE} profile"))
            continue
        resolved = resolve(recipe, profile=PROFILE, path=path, seeds=list(seeds))
        if rows:
            resolved = resolved.restricted_to_rows(list(rows))
        if not resolved.runnable_cells():
            gate.recipes.append(RecipeCheck(recipe.id, "skipped", note="no row runs (all run: false)"))
            continue
        judged = gate_cells(resolved, all_cells=all_cells or update or bool(rows))
        not_gated = [f"{resolved.id}: {c.id}: {resolved.not_gated(c)}" for c in resolved.runnable_cells()
                     if resolved.not_gated(c)]
        not_gated += [f"{resolved.id}: {c.id} ({proto}): {why}" for c in judged
                      for proto, why in resolved.not_gated_protocols(c).items()]
        cells = cells_to_run(resolved, judged)
        resolved = replace(resolved, only=frozenset(c.id for c in cells))
        pool.adopt(resolved, cells, store)
        secs["prepare"] = time.perf_counter() - clock
        clock = time.perf_counter()
        summary = execute(resolved)
        secs["runs"] = time.perf_counter() - clock
        secs["run_time"] = _run_time(resolved, store, summary)
        clock = time.perf_counter()
        pool.record(resolved, cells, store)
        runs = collect_runs(resolved, judged, store)
        secs["judge"] = time.perf_counter() - clock
        for phase, value in secs.items():
            gate.add_seconds(phase, value)
        if summary.failed:
            result = RecipeCheck(resolved.id, "failed", runs=sum(len(r.metrics) for r in runs), seconds=secs)
            result.problems.extend(f.message for f in summary.failed)
            gate.recipes.append(result)
            continue
        ref_path = reference_path(reference_dir, resolved.id)
        if update:
            doc, problems = reference_doc(resolved, runs)
            if problems:
                refused.extend(problems)
                gate.recipes.append(RecipeCheck(resolved.id, "refused", note="not recorded",
                                                runs=sum(len(r.metrics) for r in runs), not_gated=not_gated,
                                                seconds=secs))
                continue
            write_reference(ref_path, doc)
            gate.recipes.append(RecipeCheck(resolved.id, "updated", note=str(ref_path),
                                            runs=sum(len(r.metrics) for r in runs), not_gated=not_gated,
                                            seconds=secs))
            continue
        if not ref_path.is_file():
            result = RecipeCheck(resolved.id, "failed", note="no reference")
            result.problems.append(f"{ref_path}: no reference for {resolved.id}; record one with "
                                   f"xmrbench check --update {resolved.id}")
            gate.recipes.append(result)
            continue
        clock = time.perf_counter()
        result = compare(resolved, read_reference(ref_path), runs, layers=layers)
        judged_s = time.perf_counter() - clock
        secs["judge"] += judged_s
        gate.add_seconds("judge", judged_s)
        result.not_gated = not_gated
        result.seconds = secs
        gate.recipes.append(result)
    if not names:  # every recipe was checked: a reference without a recipe is stale
        own = {reference_path(reference_dir, rid) for rid in seen}  # kept even when unreadable or refused
        for ref in sorted(reference_dir.glob("*.json")):
            if ref.name == GOLDENS_FILE or ref in own:
                continue
            try:
                rid = read_reference(ref).get("recipe")
            except StoreError:
                rid = None
            if rid in seen:
                continue
            if update:
                ref.unlink()
                gate.recipes.append(RecipeCheck(str(rid or ref.stem), "updated", note=f"removed {ref} (no such recipe)"))
            else:
                result = RecipeCheck(str(rid or ref.stem), "failed", note="stale reference")
                result.problems.append(f"{ref}: unreadable, or the reference of a recipe that does not exist "
                                       "(remove it, or run xmrbench check --update)")
                gate.recipes.append(result)
    return gate
