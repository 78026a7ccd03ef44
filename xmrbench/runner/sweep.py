"""``xmrbench sweep``: a grid over any config parameter of a paper's recipe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml
from rich.table import Table

from xmrbench.errors import UsageError
from xmrbench.papers import PAPERS
from xmrbench.recipe.load import load_recipe
from xmrbench.recipe.resolve import ResolvedRecipe, config_keys, resolve, resolve_param, with_axes
from xmrbench.store.store import ResultStore


def parse_sweep_args(args: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["--margin", "0.1,0.2", "--train.lr=1e-3,2e-3"]`` -> [(name, values), ...]."""
    out: list[tuple[str, list[Any]]] = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UsageError(f"sweep: unexpected argument {arg!r}; expected --PARAM v1,v2,...")
        name, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"sweep: --{name} needs a comma-separated list of values")
            raw = args[i + 1]
            i += 1
        values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise UsageError(f"sweep: --{name} has no values")
        out.append((name, values))
        i += 1
    if not out:
        raise UsageError("sweep: name at least one parameter, e.g. --margin 0.05,0.1,0.2")
    return out


def build_sweep(
    target: str, args: Sequence[str], *, profile: str, seeds: Sequence[int] | None, overrides: dict,
    rows: Sequence[str] | None,
) -> ResolvedRecipe:
    """The derived sweep recipe, resolved and validated."""
    if target in PAPERS:
        paper = PAPERS[target]
        if not paper.sweep_recipe:
            raise UsageError(f"paper {target!r} has no default sweep recipe; name a recipe instead")
        target = paper.sweep_recipe
    recipe, path = load_recipe(target)
    base = resolve(recipe, profile=profile, seeds=seeds, overrides=overrides, path=path)
    keys = config_keys(base)
    grid = {resolve_param(name, keys): values for name, values in parse_sweep_args(args)}
    derived = with_axes(recipe, grid, rows=rows)
    return resolve(derived, profile=profile, seeds=seeds, overrides=overrides, path=path)


def sweep_table(resolved: ResolvedRecipe, store: ResultStore) -> Table:
    """rsum (mean over seeds) of every swept cell on the first protocol."""
    proto = resolved.recipe.default_protocol
    table = Table("cell", "seeds", f"rsum ({proto})", "dev rsum")
    for cell in resolved.cells:
        vals, dev = [], []
        for seed in resolved.seeds:
            st = store.status(resolved.id, cell.id, cell.hash, seed)  # type: ignore[arg-type]
            if st.doc is not None:
                vals.append(st.doc.metrics[proto]["rsum"])
                dev.append(st.doc.metrics.get("dev", {}).get("rsum", float("nan")))
        mean = lambda xs: f"{sum(xs) / len(xs):.1f}" if xs else "-"  # noqa: E731
        table.add_row(cell.id, str(len(vals)), mean(vals), mean(dev))
    return table
