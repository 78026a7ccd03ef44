"""``xmrbench check``: the regression gate.

It runs the ``smoke`` profile of every recipe (or the named ones) into a store and
compares each run's metrics, protocol by protocol, with the committed reference
results under ``results/reference/`` (one JSON file per recipe: metrics per cell,
seed and protocol, nothing else). A metric passes when ``|reference - now|`` is
within its tolerance from ``results/reference/tolerances.yaml``, which holds one
set of tolerances for the environment the reference was recorded in (same CPU,
thread count, Python, torch and numpy: bit-identical results are expected) and one
for any other (other BLAS kernels may differ in the last bits, and after training
that moves a few near-tied queries).

The check fails (exit 1) on a metric beyond its tolerance, a run without a
reference, a reference without a run, or a run that fails; ``--update`` rewrites the
references instead. Recipes without a ``smoke`` profile, and recipes none of whose
rows run, are listed as skipped.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xmrbench.errors import ConfigError, StoreError
from xmrbench.recipe.resolve import ResolvedRecipe, resolve
from xmrbench.store.store import ResultStore, atomic_write_text

PROFILE = "smoke"
REFERENCE_KIND = "xmrbench.reference"
REFERENCE_VERSION = 1
TOLERANCES_FILE = "tolerances.yaml"
#: What must be equal for the reference's environment to count as this one.
ENV_KEYS = ("machine", "cpu", "torch_threads", "python", "torch", "numpy", "device")
SECTIONS = ("same_environment", "other_environment")


# ---------------------------------------------------------------------------------
# tolerances


@dataclass(frozen=True)
class Tolerances:
    """Absolute tolerance per metric-key pattern (fnmatch), first match wins, per environment kind."""

    path: str
    same_environment: tuple[tuple[str, float], ...]
    other_environment: tuple[tuple[str, float], ...]

    def of(self, metric: str, *, same_env: bool) -> float:
        rules = self.same_environment if same_env else self.other_environment
        for pattern, tol in rules:
            if fnmatch.fnmatchcase(metric, pattern):
                return tol
        section = SECTIONS[0] if same_env else SECTIONS[1]
        raise ConfigError(f"no tolerance matches metric {metric!r} (add a pattern, or '*')", where=self.path, key=section)


def load_tolerances(path: str | Path) -> Tolerances:
    """Read and validate a tolerances file (see ``results/reference/tolerances.yaml``)."""
    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("tolerances file not found", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the tolerances file ({exc.__class__.__name__})", where=where) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"YAML syntax error: {getattr(exc, 'problem', None) or exc}",
                          where=f"{where}:{mark.line + 1}" if mark else where) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping with the sections {', '.join(SECTIONS)}", where=where)
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"unknown key (expected {', '.join(SECTIONS)})", where=where, key=str(key))
    sections: dict[str, tuple[tuple[str, float], ...]] = {}
    for section in SECTIONS:
        rules = data.get(section)
        if not isinstance(rules, dict) or not rules:
            raise ConfigError("expected a non-empty mapping of metric pattern -> tolerance", where=where, key=section)
        out = []
        for pattern, tol in rules.items():
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
                raise ConfigError(f"expected a non-negative number, got {tol!r}", where=where, key=f"{section}.{pattern}")
            out.append((str(pattern), float(tol)))
        sections[section] = tuple(out)
    return Tolerances(where, sections["same_environment"], sections["other_environment"])


# ---------------------------------------------------------------------------------
# references


def reference_path(reference_dir: Path, recipe_id: str) -> Path:
    from xmrbench.store.store import safe_name

    return reference_dir / f"{safe_name(recipe_id)}.json"


def _env_of(env: dict[str, Any]) -> dict[str, Any]:
    return {k: env.get(k) for k in ENV_KEYS}


def collect_runs(resolved: ResolvedRecipe, store: ResultStore) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``{"<cell> seed<k>": {cell, seed, hash, metrics}}`` of the stored runs, and their environment."""
    runs: dict[str, dict[str, Any]] = {}
    env: dict[str, Any] = {}
    for cell in resolved.runnable_cells():
        for seed in resolved.seeds:
            status = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            if status.doc is None:
                continue
            runs[run_key(cell.id, seed)] = {
                "cell": cell.id, "seed": seed, "hash": cell.hash, "metrics": status.doc.metrics,
            }
            env = env or _env_of(status.doc.env)
    return runs, env


def run_key(cell_id: str, seed: int) -> str:
    return f"{cell_id} seed{seed}"


def write_reference(path: Path, resolved: ResolvedRecipe, runs: dict[str, dict[str, Any]], env: dict[str, Any]) -> None:
    doc = {
        "kind": REFERENCE_KIND,
        "version": REFERENCE_VERSION,
        "recipe": resolved.id,
        "profile": resolved.profile,
        "seeds": list(resolved.seeds),
        "env": env,
        "runs": [runs[k] for k in sorted(runs)],
    }
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=True) + "\n")


def read_reference(path: Path) -> dict[str, Any]:
    """A reference file, validated; StoreError naming the file if it is unusable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError("reference file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"corrupted reference file ({exc.__class__.__name__}); rewrite it with "
                         "xmrbench check --update", where=str(path)) from None
    if not isinstance(doc, dict) or doc.get("kind") != REFERENCE_KIND:
        raise StoreError(f"not a reference file (kind is not {REFERENCE_KIND!r})", where=str(path))
    if doc.get("version") != REFERENCE_VERSION:
        raise StoreError(f"reference version {doc.get('version')!r} is not {REFERENCE_VERSION}", where=str(path))
    runs = doc.get("runs")
    if not isinstance(runs, list) or not isinstance(doc.get("env"), dict):
        raise StoreError("corrupted reference file (runs or env missing)", where=str(path))
    for i, run in enumerate(runs):
        ok = (
            isinstance(run, dict) and isinstance(run.get("cell"), str) and isinstance(run.get("seed"), int)
            and isinstance(run.get("metrics"), dict)
            and all(isinstance(m, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in m.values()) for m in run["metrics"].values())
        )
        if not ok:
            raise StoreError("corrupted reference file (a run lacks cell, seed or numeric metrics)",
                             where=str(path), key=f"runs[{i}]")
    return doc


# ---------------------------------------------------------------------------------
# comparison


@dataclass(frozen=True)
class MetricDiff:
    recipe: str
    run: str
    protocol: str
    metric: str
    reference: float
    current: float
    tolerance: float

    @property
    def delta(self) -> float:
        if math.isnan(self.reference) and math.isnan(self.current):
            return 0.0
        return self.current - self.reference

    @property
    def beyond(self) -> bool:
        d = self.delta
        return math.isnan(d) or abs(d) > self.tolerance


@dataclass
class RecipeCheck:
    recipe: str
    state: str  # "checked", "updated", "skipped", "failed"
    note: str = ""
    runs: int = 0
    compared: int = 0
    same_env: bool | None = None
    diffs: list[MetricDiff] = field(default_factory=list)  # every metric that is not identical
    problems: list[str] = field(default_factory=list)  # one line each: missing runs or references, failed runs

    @property
    def regressions(self) -> list[MetricDiff]:
        return [d for d in self.diffs if d.beyond]

    @property
    def passed(self) -> bool:
        return self.state in ("checked", "updated", "skipped") and not self.problems and not self.regressions


def compare_runs(
    recipe_id: str, reference: dict[str, Any], runs: dict[str, dict[str, Any]], env: dict[str, Any],
    tolerances: Tolerances,
) -> RecipeCheck:
    """Compare the current runs with a reference document."""
    same_env = _env_of(reference.get("env", {})) == _env_of(env)
    result = RecipeCheck(recipe_id, "checked", runs=len(runs), same_env=same_env)
    ref_runs = {run_key(r["cell"], r["seed"]): r for r in reference["runs"]}
    for key in sorted(set(runs) - set(ref_runs)):
        result.problems.append(f"{recipe_id}: {key}: no reference (new cell or seed; record it with --update)")
    for key in sorted(set(ref_runs) - set(runs)):
        result.problems.append(f"{recipe_id}: {key}: in the reference but not run (cell or seed removed; --update)")
    for key in sorted(set(runs) & set(ref_runs)):
        now, ref = runs[key]["metrics"], ref_runs[key]["metrics"]
        for proto in sorted(set(now) | set(ref)):
            if proto not in now or proto not in ref:
                side = "the reference" if proto not in ref else "this run"
                result.problems.append(f"{recipe_id}: {key}: protocol {proto!r} is missing from {side}")
                continue
            for metric in sorted(set(now[proto]) | set(ref[proto])):
                if metric not in now[proto] or metric not in ref[proto]:
                    side = "the reference" if metric not in ref[proto] else "this run"
                    result.problems.append(f"{recipe_id}: {key}: {proto}.{metric} is missing from {side}")
                    continue
                diff = MetricDiff(recipe_id, key, proto, metric, float(ref[proto][metric]), float(now[proto][metric]),
                                  tolerances.of(metric, same_env=same_env))
                result.compared += 1
                if diff.delta != 0.0:
                    result.diffs.append(diff)
    return result


# ---------------------------------------------------------------------------------
# the gate


def check_targets(names: Sequence[str] | None) -> list[str | Path]:
    """The recipes to check: the named ones (ids or paths), else every recipe in ``recipes/``."""
    from xmrbench.recipe.load import recipe_index

    if names:
        return list(names)
    return list(recipe_index().values())


def run_check(
    names: Sequence[str] | None,
    *,
    store: ResultStore,
    reference_dir: Path,
    tolerances: Tolerances,
    update: bool,
    execute: Callable[[ResolvedRecipe], Any],
) -> list[RecipeCheck]:
    """Run and compare (or, with ``update``, record) every target recipe's smoke profile.

    ``execute(resolved)`` computes the missing runs into ``store`` and returns a
    summary with ``failed`` (see :func:`xmrbench.runner.execute.reproduce`).
    """
    from xmrbench.recipe.load import load_recipe

    out: list[RecipeCheck] = []
    seen: set[str] = set()
    for target in check_targets(names):
        recipe, path = load_recipe(target)
        seen.add(recipe.id)
        if PROFILE not in recipe.profiles:
            out.append(RecipeCheck(recipe.id, "skipped", note=f"no {PROFILE} profile"))
            continue
        resolved = resolve(recipe, profile=PROFILE, path=path)
        if not resolved.runnable_cells():
            out.append(RecipeCheck(recipe.id, "skipped", note="no row runs (all run: false)"))
            continue
        summary = execute(resolved)
        runs, env = collect_runs(resolved, store)
        ref_path = reference_path(reference_dir, resolved.id)
        if summary.failed:
            result = RecipeCheck(resolved.id, "failed", runs=len(runs))
            result.problems.extend(f.message for f in summary.failed)
            out.append(result)
            continue
        if update:
            write_reference(ref_path, resolved, runs, env)
            out.append(RecipeCheck(resolved.id, "updated", note=str(ref_path), runs=len(runs)))
            continue
        if not ref_path.is_file():
            result = RecipeCheck(resolved.id, "failed", note="no reference", runs=len(runs))
            result.problems.append(f"{ref_path}: no reference for {resolved.id}; record one with "
                                   f"xmrbench check --update {resolved.id}")
            out.append(result)
            continue
        out.append(compare_runs(resolved.id, read_reference(ref_path), runs, env, tolerances))
    if not names:  # every recipe was checked: a reference without a recipe is stale
        for ref in sorted(reference_dir.glob("*.json")):
            try:
                rid = read_reference(ref).get("recipe")
            except StoreError:
                rid = None
            if rid in seen or any(r.recipe == rid for r in out):
                continue
            if update:
                ref.unlink()
                out.append(RecipeCheck(str(rid or ref.stem), "updated", note=f"removed {ref} (no such recipe)"))
            else:
                result = RecipeCheck(str(rid or ref.stem), "failed", note="stale reference")
                result.problems.append(f"{ref}: unreadable, or the reference of a recipe that does not exist "
                                       "(remove it, or run xmrbench check --update)")
                out.append(result)
    return out
