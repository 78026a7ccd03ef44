"""``xmrbench sweep``: vary config parameters of a paper's recipe.

Two kinds of target:

- a recipe (or a paper with a ``sweep_recipe``): every ``--PARAM`` becomes a grid axis of
  the recipe's rows (``--rows`` picks some), ``xmrbench sweep two_branch --margin 0.1,0.2``;
- a parameter the paper varies in a table of its own (``Paper.sweeps``): ``xmrbench sweep
  aoq --h 200,500,1000`` copies the table's row once per value, with the value in the
  parameter's config key, beside the rows that row needs (its round one, say), which run
  once. Several parameters combine as a grid or one at a time around the row's own values
  (``--shape``; default: what the paper's table does). The result table sets each cell
  beside the printed row of the same settings, where the paper has one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import yaml
from rich.table import Table

from xmrbench.errors import ConfigError, UsageError
from xmrbench.papers import PAPERS, Paper
from xmrbench.recipe.load import load_recipe
from xmrbench.recipe.resolve import ResolvedRecipe, config_keys, resolve, resolve_param, with_axes
from xmrbench.recipe.schema import Recipe
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
    rows: Sequence[str] | None, shape: str = "auto",
) -> ResolvedRecipe:
    """The derived sweep recipe, resolved and validated."""
    if shape not in ("auto", "grid", "star"):
        raise UsageError(f"sweep: --shape must be auto, grid or star; got {shape!r}")
    if target in PAPERS:
        paper = PAPERS[target]
        if paper.sweeps:
            if rows:
                raise UsageError(f"sweep {target}: --rows does not apply; each parameter names the row of its "
                                 "table (name the recipe instead to sweep other rows)")
            return _paper_sweep(paper, parse_sweep_args(args), shape=shape, profile=profile, seeds=seeds,
                                overrides=overrides)
        if not paper.sweep_recipe:
            raise UsageError(f"paper {target!r} has no default sweep recipe; name a recipe instead")
        target = paper.sweep_recipe
    recipe, path = load_recipe(target)
    base = resolve(recipe, profile=profile, seeds=seeds, overrides=overrides, path=path)
    keys = config_keys(base)
    grid = {resolve_param(name, keys): values for name, values in parse_sweep_args(args)}
    if shape == "star":
        raise UsageError("sweep: --shape star applies to a paper's own sweep parameters (e.g. xmrbench sweep "
                         "aoq --alpha 0.2,0.5 --beta 1.0,2.0); a recipe's axes form a grid")
    derived = with_axes(recipe, grid, rows=rows)
    return resolve(derived, profile=profile, seeds=seeds, overrides=overrides, path=path)


def _paper_sweep(paper: Paper, params: list[tuple[str, list[Any]]], *, shape: str, profile: str,
                 seeds: Sequence[int] | None, overrides: dict) -> ResolvedRecipe:
    known = ", ".join(f"--{k}" for k in paper.sweeps)
    targets = []
    for name, values in params:
        if name not in paper.sweeps:
            raise UsageError(f"sweep {paper.key}: no sweep parameter --{name}; {paper.key} sweeps {known}")
        targets.append((paper.sweeps[name], values))
    first = targets[0][0]
    if any((t.recipe, t.row) != (first.recipe, first.row) for t, _ in targets):
        tables = sorted({f"--{n} ({paper.sweeps[n].recipe})" for n, _ in params})
        raise UsageError(f"sweep {paper.key}: {', '.join(tables)} vary different tables; sweep them one at a time")
    if shape == "auto":
        shape = first.shape
    recipe, path = load_recipe(first.recipe)
    if shape == "grid":
        keys = [t.key for t, _ in targets]
        settings = [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in targets))]
    else:
        settings = [{t.key: v} for t, values in targets for v in values]
    derived = with_settings(recipe, first.row, settings)
    return resolve(derived, profile=profile, seeds=seeds, overrides=overrides, path=path)


def _slug(value: Any) -> str:
    return str(value).lower().replace(" ", "").replace("+", "")


def with_settings(recipe: Recipe, row_id: str, settings: Sequence[dict[str, Any]]) -> Recipe:
    """A derived sweep recipe: one copy of row ``row_id`` per setting (``{key: value}``
    merged into its ``set``), beside the rows it needs (transitively), which are kept as
    they are and run once."""
    by_id = {r.id: r for r in recipe.rows}
    if row_id not in by_id or not by_id[row_id].run:
        raise UsageError(f"{recipe.id}: no runnable row {row_id!r} to sweep")
    base = by_id[row_id]
    need, todo = [], [base]
    while todo:  # the rows the swept row needs, in recipe order
        row = todo.pop()
        if row.needs is None:
            continue
        for dep in [row.needs.init, *(a.cell for a in row.needs.artifacts.values())]:
            if dep is not None and dep not in need:
                need.append(dep)
                todo.append(by_id[dep])
    kept = [r.model_dump() | {"paper": {}, "source": None} for r in recipe.rows if r.id in need]
    copies, seen, points = [], set(), {}
    for setting in settings:
        suffix = ".".join(f"{k.rsplit('.', 1)[-1]}-{_slug(v)}" for k, v in setting.items())
        rid = f"{base.id}.{suffix}"
        if rid in seen:
            continue
        seen.add(rid)
        points[rid] = dict(setting)
        label = f"{base.label} [{', '.join(f'{k} = {v}' for k, v in setting.items())}]"
        copies.append(base.model_dump() | {"id": rid, "label": label, "set": {**base.set, **setting},
                                           "paper": {}, "source": None})
    data = recipe.model_dump()
    names = "_".join(dict.fromkeys(k.rsplit(".", 1)[-1] for s in settings for k in s))
    data.update(id=f"{recipe.id}.sweep-{names}", kind="sweep",
                title=f"{recipe.title} (sweep of {base.id} over {', '.join(dict.fromkeys(k for s in settings for k in s))})",
                rows=kept + copies, paper_values={}, claims=[], figures=[], ci_rows=[], cell_profiles={},
                sweep_points=points,
                near_chance={k: v for k, v in recipe.near_chance.items() if k in need},
                not_gated={k: v for k, v in recipe.not_gated.items() if k in need})
    try:
        return Recipe(**data)
    except Exception as exc:  # pydantic error on a derived recipe = a bad sweep value
        raise ConfigError(f"invalid sweep: {exc}") from None


def headline_metric(recipe: Recipe) -> str:
    """The one number a sweep tabulates and plots per cell: the mean mAP of a label-retrieval
    table (ACMR's), else rsum."""
    return "avg_map" if "avg_map" in recipe.columns else "rsum"


def printed_rows(resolved: ResolvedRecipe) -> dict[str, tuple[str, float | None]]:
    """Config hash -> (row id, printed headline metric on the default protocol) for every row
    of the recipe a sweep was derived from that has printed numbers; a sweep cell with the
    same config is the paper's row. rsum is the printed rsum, else the sum of the printed
    recalls; the mean mAP is the printed one."""
    base_id = resolved.id.split(".sweep-")[0]
    if base_id == resolved.id:
        return {}
    try:
        recipe, path = load_recipe(base_id)
        original = resolve(recipe, profile=resolved.profile, seeds=resolved.seeds, path=path)
    except Exception:  # a recipe given by a path that moved: no printed numbers to show
        return {}
    proto = original.recipe.default_protocol
    metric = headline_metric(original.recipe)
    out: dict[str, tuple[str, float | None]] = {}
    for cell in original.cells:
        printed = cell.paper.get(proto)
        if not printed or cell.config is None or cell.members:
            continue
        if metric != "rsum":
            value = printed.get(metric)
            out.setdefault(cell.config.hash(), (cell.id, None if value is None else float(value)))  # type: ignore[arg-type]
            continue
        if printed.get("rsum") is not None:
            rsum = float(printed["rsum"])  # type: ignore[arg-type]
        else:
            recalls = [v for k, v in printed.items() if k.startswith(("i2t_r", "t2i_r"))]
            rsum = round(sum(recalls), 1) if len(recalls) == 6 and all(v is not None for v in recalls) else None  # type: ignore[arg-type]
        out.setdefault(cell.config.hash(), (cell.id, rsum))
    return out


def _cell_docs(resolved: ResolvedRecipe, store: ResultStore, cell_id: str, cell_hash: str) -> list[Any]:
    """The stored result of every seed of one cell that has one."""
    docs = (store.status(resolved.id, cell_id, cell_hash, seed).doc for seed in resolved.seeds)
    return [doc for doc in docs if doc is not None]


def _values(docs: Sequence[Any], metric: str, protocol: str) -> list[float]:
    return [float(d.metrics[protocol][metric]) for d in docs if metric in d.metrics.get(protocol, {})]


def sweep_table(resolved: ResolvedRecipe, store: ResultStore) -> Table:
    """The headline metric (rsum, or a label table's mean mAP; mean over seeds) of every
    swept cell on the first protocol and on dev, beside the paper's row of the same
    settings when the table it was derived from prints one."""
    proto = resolved.recipe.default_protocol
    metric = headline_metric(resolved.recipe)
    digits = 3 if metric != "rsum" else 1
    printed = printed_rows(resolved)
    table = Table(title=f"{resolved.id} ({resolved.profile} profile; ours on the synthetic world unless --data-root)")
    table.add_column("cell", overflow="fold")
    for name in ("seeds", f"{metric} ({proto}, ours)", f"dev {metric}", "paper row", f"paper {metric}"):
        table.add_column(name, overflow="fold")
    for cell in resolved.cells:
        docs = _cell_docs(resolved, store, cell.id, cell.hash)  # type: ignore[arg-type]
        vals, dev = _values(docs, metric, proto), _values(docs, metric, "dev")
        mean = lambda xs: f"{sum(xs) / len(xs):.{digits}f}" if xs else "-"  # noqa: E731
        row, value = printed.get(cell.config.hash(), ("-", None)) if cell.config is not None else ("-", None)
        table.add_row(cell.id, str(len(vals)), mean(vals), mean(dev), row,
                      "-" if value is None else f"{value:.{digits}f}")
    return table


def sweep_series(resolved: ResolvedRecipe, store: ResultStore) -> tuple[dict[str, list[tuple[Any, list[float]]]], list[str]]:
    """For a sweep of a paper's own parameters, one parameter at a time: swept key ->
    [(value, the headline metric of each stored seed)] in the order swept (the sweep's
    figure draws one panel per key; a point that sets several keys, from a grid, is left
    out), and the datasets the stored runs were measured on."""
    proto = resolved.recipe.default_protocol
    metric = headline_metric(resolved.recipe)
    out: dict[str, list[tuple[Any, list[float]]]] = {}
    datasets: set[str] = set()
    for cell in resolved.cells:
        setting = resolved.recipe.sweep_points.get(cell.row.id)
        if not setting or len(setting) != 1 or cell.hash is None:
            continue
        (key, value), = setting.items()
        docs = _cell_docs(resolved, store, cell.id, cell.hash)
        out.setdefault(key, []).append((value, _values(docs, metric, proto)))
        datasets.update(d.dataset.name for d in docs)
    return out, sorted(datasets)
