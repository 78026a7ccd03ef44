"""The ``--json`` documents of the command line, one per verb (``docs/json.md``).

Every document is one JSON object on stdout, in a versioned envelope::

    {"schema": "xmrbench/<verb>", "version": 1, ...}

Within a version fields are only added; removing a field or changing its meaning bumps
that verb's version in ``VERSIONS``. The console output of ``list`` and ``plan`` is drawn
from the same payloads, so what a script reads is what a person sees.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Verb -> the version of its document's schema.
VERSIONS: dict[str, int] = {
    "list": 1,
    "show": 1,
    "plan": 1,
    "check": 1,
    "bench": 1,
    "env": 1,
    "data-check": 1,
}


def envelope(verb: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` under the envelope keys of ``verb``'s schema."""
    return {"schema": f"xmrbench/{verb}", "version": VERSIONS[verb], **payload}


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: paths as strings, tuples as lists, NaN and ±inf as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(verb: str, payload: Mapping[str, Any]) -> None:
    """Print ``verb``'s document to stdout (the only thing on stdout)."""
    sys.stdout.write(json.dumps(plain(envelope(verb, payload)), indent=1, allow_nan=False) + "\n")


def _display(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------
# list


def list_payload(results: Path, profile: str) -> dict[str, Any]:
    """Every recipe: paper, table, title, file, and (with ``profile``) its cells and stored runs."""
    from xmrbench.recipe.load import load_recipe, recipe_index
    from xmrbench.recipe.resolve import resolve
    from xmrbench.runner.driver import plan_runs
    from xmrbench.store.store import ResultStore

    store = ResultStore(results)
    recipes = []
    for rid, path in recipe_index().items():
        recipe, _ = load_recipe(path)
        entry: dict[str, Any] = {"id": rid, "paper": recipe.paper, "table": recipe.table, "title": recipe.title,
                                 "file": _display(path), "has_profile": profile in recipe.profiles,
                                 "cells": None, "runnable": None, "runs": None, "done": None}
        if entry["has_profile"]:
            resolved = resolve(path, profile=profile, require_data=False)
            runs = plan_runs(resolved, store)
            entry.update(cells=len(resolved.cells), runnable=len(resolved.runnable_cells()), runs=len(runs),
                         done=sum(1 for *_, state in runs if state == "done"))
        recipes.append(entry)
    return {"profile": profile, "results": str(results), "recipes": recipes}


# ---------------------------------------------------------------------------------
# show


def cell_settings(cell: Any) -> dict[str, Any]:
    """The settings a cell's row (and grid point) changes, as ``show`` prints them."""
    return {**cell.row.set, **cell.point}


def show_payload(resolved: Any) -> dict[str, Any]:
    """The resolved recipe (``ResolvedRecipe.to_dict``) with, per cell, its row, whether it
    runs, the settings it changes and why it does not run; and the recipe's lint warnings."""
    out = resolved.to_dict()
    for entry, cell in zip(out["cells"], resolved.cells, strict=True):
        entry.update(row=cell.row.id, runnable=cell.runnable, settings=cell_settings(cell),
                     pending=None if cell.runnable else (cell.row.pending or "printed by the paper only"))
    out["warnings"] = list(resolved.warnings)
    return out


# ---------------------------------------------------------------------------------
# plan


def _convergence(store: Any, resolved: Any, cell: Any, seed: int) -> dict[str, Any] | None:
    """A done run's convergence record, or None when it cannot be read or judged."""
    from xmrbench.errors import StoreError

    try:
        doc = store.read(store.result_path(resolved.id, cell.id, cell.hash, seed))
    except StoreError:
        return None
    record = doc.convergence_record()
    return None if record is None else record.to_dict()


def _needs(cell: Any) -> dict[str, Any] | None:
    if cell.needs is None:
        return None
    return {"init": cell.needs.init.id if cell.needs.init is not None else None,
            "artifacts": [{"name": a.name, "miner": a.miner, "source": a.source.id} for a in cell.needs.artifacts]}


def plan_payload(resolved: Any, store: Any, results: Path, jobs: int = 1) -> dict[str, Any]:
    """Every run ``reproduce`` would consider: its row, seed, cell hash, store state, time
    estimate and (done) convergence; the artifacts it needs; the totals, with the wall
    time on ``jobs`` workers."""
    from xmrbench.runner.adopt import find_training
    from xmrbench.runner.driver import queue_order
    from xmrbench.runner.plan import artifact_plan, estimate, wall_seconds
    from xmrbench.runner.stored import run_config

    rows, _, basis = estimate(resolved, store)
    runs = []
    for row in rows:
        cell_id, seed, state, est, same_size = row.cell, row.seed, row.state, row.seconds, row.same_size
        other_model = row.other_model
        cell = resolved.cell(cell_id)
        done = state == "done"
        trained_by = trained_epochs = None
        if not done and cell.config is not None and not cell.members:
            config = run_config(cell)
            source = find_training(store, config, seed)
            if source is not None:  # evaluates a stored model: its time is the evaluation's
                doc = source[0]
                trained_by = f"{doc.recipe.id}/{store.run_name(doc.cell.id, doc.cell.hash, seed)}"
                if doc.config["train"].get("epochs") != config["train"].get("epochs"):  # stopped early, below the cap
                    trained_epochs = len(doc.curves.get("dev_score", []))
                est, same_size, other_model = doc.timing.get("eval_s", 0.0), True, False
        runs.append({"cell": cell_id, "row": cell.row.id, "stage": cell.stage, "seed": seed, "hash": cell.hash,
                     "state": state, "todo": not done, "estimate_s": None if done else est,
                     "estimate_same_size": None if done or est is None else same_size,
                     "estimate_other_model": None if done or est is None else other_model,
                     "convergence": _convergence(store, resolved, cell, seed) if done else None,
                     "needs": _needs(cell), "trained_by": trained_by, "trained_by_epochs": trained_epochs})
    todo = [r["estimate_s"] for r in runs if r["todo"]]
    total = None if any(e is None for e in todo) else float(sum(todo))
    wall = None
    if total is not None:  # the runs to do, queued as reproduce queues them (runner/driver.py)
        batch = [r for r in runs if r["todo"]]
        keys = [(r["cell"], r["seed"]) for r in batch]
        inside = set(keys)
        after = [tuple(k for dep in resolved.cell(r["cell"]).dependencies if (k := (dep.id, r["seed"])) in inside)
                 for r in batch]
        order = queue_order(keys, after, [bool(resolved.cell(r["cell"]).members) for r in batch])
        at = {keys[i]: n for n, i in enumerate(order)}
        wall = wall_seconds([batch[i]["estimate_s"] for i in order],
                            [[at[k] for k in after[i]] for i in order], jobs)
    artifacts = [{"key": a.key, "miner": a.miner, "source": a.source, "seed": a.seed, "state": a.state,
                  "used_by": list(a.used_by)} for a in artifact_plan(resolved, store)]
    return {
        "recipe": resolved.id, "profile": resolved.profile, "seeds": list(resolved.seeds), "results": str(results),
        "runs": runs, "artifacts": artifacts,
        "summary": {"runs": len(runs), "todo": sum(1 for r in runs if r["todo"]),
                    "artifacts_todo": sum(1 for a in artifacts if a["state"] != "done"),
                    "estimate_s": total, "wall": {"jobs": jobs, "estimate_s": wall}, "basis": basis,
                    "estimates_other_size": sum(1 for r in runs if r["estimate_same_size"] is False),
                    "estimates_other_model": sum(1 for r in runs if r["estimate_other_model"])},
        "warnings": list(resolved.warnings),
    }


def convergence_label(record: Mapping[str, Any] | None) -> str:
    """A convergence record in a few words, for the ``plan`` table (the full reason is in
    ``plan --json``): ``yes (plateau, 12 epochs)``, ``no (2 epoch(s), needs > 3)``."""
    if record is None:
        return "?"
    criterion, epochs = record.get("criterion"), record.get("epochs")
    if record.get("converged"):
        if criterion == "plateau" and epochs is not None:
            return f"yes (plateau, {epochs} epochs)"
        return f"yes ({criterion})"
    if criterion == "plateau" and epochs is not None:
        if record.get("gain") is None:
            return f"no ({epochs} epoch(s), needs > {record.get('window')})"
        return f"no (still improving, {epochs} epochs)"
    return f"no ({record.get('reason', criterion)})"


# ---------------------------------------------------------------------------------
# check


def _learning(check: Any) -> dict[str, Any]:
    return {
        "cell": check.cell, "protocol": check.protocol, "metric": check.metric, "expect": check.expect,
        "values": list(check.current), "mean": check.current_mean,
        "reference_mean": check.reference_mean, "tolerance": check.tolerance,
        "band": [check.reference_mean - check.tolerance, check.reference_mean + check.tolerance],
        "bar": check.bar, "chance": check.chance,
        "within": check.within, "on_the_right_side": check.on_the_right_side, "passed": check.passed,
        "why": None if check.passed else check.why(),
    }


def _recipe_check(r: Any) -> dict[str, Any]:
    applied = r.replay if r.state == "checked" else None
    return {
        "recipe": r.recipe, "state": r.state, "passed": r.passed, "note": r.note, "runs": r.runs,
        "learning": [_learning(c) for c in r.learning],
        "replay": {"applied": applied, "compared": r.replay_compared,
                   "identical": r.replay_compared - len(r.replay_mismatches), "mismatches": list(r.replay_mismatches)},
        "problems": list(r.problems), "not_gated": list(r.not_gated), "seconds": dict(r.seconds),
    }


def check_exit_code(gate: Any) -> int:
    """The exit code ``check`` ends with: 2 references refused, 1 failed, 0 passed."""
    return 2 if gate.refused else 0 if gate.passed else 1


def check_payload(gate: Any, *, layers: list[str], update: bool) -> dict[str, Any]:
    """The gate's findings by layer: every golden, every learning check with its band and
    values, bit-exact replay counts and mismatches, problems; the exit code."""
    kernels = None
    if gate.kernels is not None:
        kernels = {
            "note": gate.kernels_note, "compared": len(gate.kernels), "beyond": len(gate.kernel_failures),
            "goldens": [{"name": d.name, "max_abs": d.max_abs, "max_rel": d.max_rel, "atol": d.atol, "rtol": d.rtol,
                         "ratio": d.ratio, "problem": d.problem, "passed": not d.beyond} for d in gate.kernels],
        }
    return {
        "mode": "update" if update else "check", "layers": list(layers), "passed": gate.passed and not gate.refused,
        "exit_code": check_exit_code(gate), "kernels": kernels,
        "recipes": [_recipe_check(r) for r in gate.recipes], "refused": list(gate.refused),
        "seconds": dict(gate.seconds),
    }


# ---------------------------------------------------------------------------------
# bench, env, data check


def bench_payload(env: Mapping[str, Any], run: Any, *, quick: bool, created: str) -> dict[str, Any]:
    """When and where, the measured ceilings, one record per kernel, and every benchmark's
    timings, ratios and notes (what ``bench --json`` prints and the store keeps)."""
    return {"created": created, "sizes": "quick" if quick else "full", "env": dict(env),
            "ceilings": run.ceilings.to_dict(),
            "kernels": [k.to_dict() for r in run.results for k in r.kernels],
            "results": [r.to_dict() for r in run.results]}


def env_payload(env: Mapping[str, Any]) -> dict[str, Any]:
    """The environment (what plain ``xmrbench env`` prints), under ``env``."""
    return {"env": dict(env)}


def data_check_payload(report: Any) -> dict[str, Any]:
    """A data check: the layout found, the summary, problems (one line each) and notes."""
    return {"path": report.path, "ok": report.ok, "layout": report.layout, "summary": list(report.summary),
            "problems": list(report.problems), "notes": list(report.notes)}
