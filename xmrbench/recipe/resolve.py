"""Resolution: a recipe + profile + overrides -> a list of fully specified cells.

The config of a cell is merged in this order (later wins):
``recipe.config`` (after ``extends``) <- ``profiles.<profile>.config`` <- ``row.set``
<- ``row.profiles.<profile>`` <- ``cell_profiles.<cell>.<profile>`` <- grid/zip point
<- ``--set`` overrides.

A row's ``set`` and ``profiles`` already hold the presets it ``use``s (merged when the
recipe is validated, :mod:`xmrbench.recipe.schema`), so presets need no layer of their own.

Rows come after the profile so that a row's defining switch can never be undone by
a budget (a row may scale its own parameters per profile, and one grid point of it
may have its own budget); a sweep point comes after the row so that the swept value
is the one that runs; ``--set`` always wins.

Everything is validated here, before any work: an unknown key, a wrong type or an
unknown component fails with the file and the dotted key.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from xmrbench.config import CellConfig, content_hash, deep_merge, expand_dotted, flatten, training_hash
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.errors import ConfigError, RecipeError, UsageError, XmrbenchError
from xmrbench.recipe.config import validate_cell_config
from xmrbench.recipe.lint import lint_recipe_full, normalized_values
from xmrbench.recipe.load import _display, load_recipe
from xmrbench.recipe.schema import PROFILES, Recipe, Row


@dataclass(frozen=True)
class ArtifactRef:
    """An artifact a cell's training reads: ``miner`` (with ``params``) over ``source``'s model."""

    name: str
    source: Cell
    miner: str
    params: Any  # the miner's validated Params

    def identity(self) -> dict[str, Any]:
        from xmrbench.engine.miners import MINERS

        # the source's training hash: the same model mined in another table (which
        # reports other protocols) is the same artifact
        return {"source": self.source.training_hash, "miner": self.miner, "version": MINERS[self.miner].version,
                "params": self.params.model_dump(mode="json")}

    def key(self, seed: int) -> str:
        """Content address of the artifact of ``seed``: source run, miner, version and parameters."""
        return content_hash({**self.identity(), "seed": seed}, length=16)


@dataclass(frozen=True)
class CellNeeds:
    """A later stage's inputs: the cell whose weights it starts from, and its artifacts."""

    init: Cell | None
    artifacts: tuple[ArtifactRef, ...]

    def identity(self) -> dict[str, Any]:
        return {"init": self.init.training_hash if self.init is not None else None,
                "artifacts": {a.name: a.identity() for a in self.artifacts}}

    def sources(self) -> list[Cell]:
        out = [self.init] if self.init is not None else []
        return out + [a.source for a in self.artifacts]


@dataclass(frozen=True)
class Cell:
    """One cell of a table: a row at one grid point. ``config`` is None for rows not run."""

    id: str
    row: Row
    point: dict[str, Any]
    config: CellConfig | None  # an ensemble carries its first member's (for evaluation settings)
    paper: dict[str, dict[str, float | None]]  # protocol -> metric -> printed value
    members: tuple[Cell, ...] = ()  # an ensemble's member cells
    needs: CellNeeds | None = None  # a later training stage's inputs from other cells (same seed)

    @property
    def dependencies(self) -> list[Cell]:
        """Cells whose runs (same seed) must be stored before this one's can run."""
        return list(self.members) + (self.needs.sources() if self.needs is not None else [])

    @property
    def stage(self) -> int:
        """0 for a cell that needs no other; else one more than its deepest dependency."""
        deps = self.dependencies
        return 1 + max(d.stage for d in deps) if deps else 0

    @property
    def label(self) -> str:
        if not self.point:
            return self.row.label
        return f"{self.row.label} [{', '.join(f'{k}={v}' for k, v in self.point.items())}]"

    def _ensemble_identity(self, member_hashes: list[str | None]) -> dict[str, Any]:
        ident: dict[str, Any] = {"ensemble": member_hashes}
        if self.row.region_phrase_weight is not None:  # another way of combining the members
            ident["region_phrase_weight"] = self.row.region_phrase_weight
        return ident

    def stored_config(self) -> dict[str, Any]:
        """A training cell's config as its result stores it: the cell config, with
        ``needs`` for a later stage."""
        assert self.config is not None
        return self.config.to_dict() | ({"needs": self.needs.identity()} if self.needs is not None else {})

    @property
    def hash(self) -> str | None:
        if self.members:
            return content_hash(self._ensemble_identity([m.hash for m in self.members]))
        if self.config is None:
            return None
        if self.needs is not None:  # the same config from other weights or artifacts is another run
            return content_hash({"config": self.config.hash(), "needs": self.needs.identity()})
        return self.config.hash()

    @property
    def training_hash(self) -> str | None:
        """What this cell's model is, apart from what it reports: equal for two cells whose
        configs differ only in ``REPORTING_KEYS`` (config.training_hash of the stored
        config). A later stage names its sources by it, so the round two of one table
        and of another that reports other protocols are one training."""
        if self.members:
            return content_hash(self._ensemble_identity([m.training_hash for m in self.members]), length=16)
        if self.config is None:
            return None
        return training_hash(self.stored_config())

    @property
    def runnable(self) -> bool:
        return self.config is not None


def _declared(declarations: Mapping[str, Any], cell: Cell) -> Any:
    """A declaration of ``cell`` by its own id or its row's id, or None."""
    return declarations.get(cell.id) or declarations.get(cell.row.id)


@dataclass
class ResolvedRecipe:
    recipe: Recipe
    path: Path
    profile: str
    seeds: tuple[int, ...]
    overrides: dict[str, Any]
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)  # inconsistencies the recipe declares
    only: frozenset[str] | None = None  # run only these cells (``--rows``); None = every runnable cell

    @property
    def id(self) -> str:
        return self.recipe.id

    @property
    def hash(self) -> str:
        """Content hash of everything that determines what runs."""
        return content_hash(
            {
                "recipe": self.recipe.id,
                "profile": self.profile,
                "cells": [[c.id, c.hash] for c in self.cells],
                "seeds": list(self.seeds),
            }
        )

    def runnable_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.runnable and (self.only is None or c.id in self.only)]

    def restricted_to_rows(self, rows: list[str]) -> ResolvedRecipe:
        """The same recipe with only the cells of ``rows`` to run (and the members of the
        ensembles among them); the other rows stay in the table, with their paper numbers."""
        known = {c.row.id for c in self.cells}
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise UsageError(f"{self.id}: no row(s) {', '.join(unknown)}; rows: {', '.join(sorted(known))}")
        chosen = [c for c in self.cells if c.row.id in rows]
        not_run = [c.row.id for c in chosen if not c.runnable]
        if not_run:
            raise UsageError(f"{self.id}: row(s) {', '.join(dict.fromkeys(not_run))} are not run by xmrbench (run: false)")
        only: set[str] = set()
        todo = list(chosen)
        while todo:  # the chosen cells and, transitively, the cells they need
            cell = todo.pop()
            if cell.id not in only:
                only.add(cell.id)
                todo.extend(cell.dependencies)
        return replace(self, only=frozenset(only))

    def near_chance(self, cell: Cell) -> str | None:
        """The paper's reason why ``cell`` is expected to stay near chance, or None."""
        return _declared(self.recipe.near_chance, cell)

    def not_gated(self, cell: Cell) -> str | None:
        """Why the regression gate does not judge ``cell`` at all, or None (a declaration
        of some of its protocols only: :meth:`not_gated_protocols`)."""
        why = _declared(self.recipe.not_gated, cell)
        return why if isinstance(why, str) else None

    def not_gated_protocols(self, cell: Cell) -> dict[str, str]:
        """The evaluation protocols of ``cell`` whose learning checks the gate leaves out,
        with the measured reason of each (empty when the whole cell, or nothing, is declared)."""
        why = _declared(self.recipe.not_gated, cell)
        return dict(why) if isinstance(why, dict) else {}

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise RecipeError(f"no cell {cell_id!r}; cells: {', '.join(c.id for c in self.cells)}", where=self.recipe.id)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe, saved beside the results."""
        return {
            "id": self.recipe.id,
            "path": _display(self.path),
            "hash": self.hash,
            "profile": self.profile,
            "seeds": list(self.seeds),
            "overrides": self.overrides,
            "recipe": self.recipe.model_dump(mode="json"),
            "cells": [
                {"id": c.id, "label": c.label, "hash": c.hash, "config": c.config.to_dict() if c.config else None}
                | ({"needs": c.needs.identity()} if c.needs is not None else {})
                for c in self.cells
            ],
        }


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "model.linear=true"]`` -> ``{"train.lr": 0.1, "model.linear": True}``.

    Values are parsed as YAML scalars/lists (so ``0.1`` is a number and ``true`` a
    boolean); their types are then checked against the config schema.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise UsageError(f"--set {item!r}: empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def _component_fields(section: str, name: Any) -> set[str] | None:
    from xmrbench.core.losses.registry import LOSSES
    from xmrbench.core.models.registry import MODELS

    registry = {"model": MODELS, "loss": LOSSES}[section]
    if not isinstance(name, str) or name not in registry:
        return None
    return set(registry[name].Params.model_fields)


def merge_layers(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Deep-merge config layers in order; later layers win.

    When a layer switches a component (``model.name`` or ``loss.name``), parameters
    from earlier layers that the new component does not accept are dropped, since
    they belonged to the component it replaces; parameters written in the switching
    layer or later are validated strictly.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        for section in ("model", "loss"):
            new = layer.get(section)
            old = merged.get(section)
            if isinstance(new, Mapping) and isinstance(old, Mapping) and "name" in new and new["name"] != old.get("name"):
                fields = _component_fields(section, new["name"])
                if fields is not None:
                    merged[section] = {k: v for k, v in old.items() if k == "name" or k in fields}
        merged = deep_merge(merged, layer)
    return merged


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _points(recipe: Recipe) -> list[dict[str, Any]]:
    """The grid x zip points; [{}] when the recipe has no axes."""
    zips: list[dict[str, Any]] = [{}]
    if recipe.zip:
        keys = list(recipe.zip)
        zips = [dict(zip(keys, vals, strict=True)) for vals in zip(*recipe.zip.values(), strict=True)]
    grids: list[dict[str, Any]] = [{}]
    if recipe.grid:
        keys = list(recipe.grid)
        grids = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*recipe.grid.values())]
    return [{**z, **g} for z in zips for g in grids]


def _point_id(point: Mapping[str, Any]) -> str:
    leaves = [k.rsplit(".", 1)[-1] for k in point]
    names = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(point, leaves)]
    return ",".join(f"{name}={_fmt(value)}" for name, value in zip(names, point.values()))


def resolve(
    ref: str | Path | Recipe,
    *,
    profile: str = "quick",
    seeds: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    path: Path | None = None,
    require_data: bool = True,
) -> ResolvedRecipe:
    """Resolve a recipe into validated cells (see the module docstring for merge order).

    ``require_data=False`` resolves a profile that needs ``--data-root`` without one
    (to read its results or show its cells).
    """
    if isinstance(ref, Recipe):
        recipe, rpath = ref, path or Path(f"{ref.id}.yaml")
    else:
        recipe, rpath = load_recipe(ref)
    where = _display(rpath)
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    if profile not in recipe.profiles:
        known = ", ".join(recipe.profiles) or "(none)"
        raise RecipeError(f"profile {profile!r} is not defined; defined: {known}", where=where, key="profiles")
    spec = recipe.profiles[profile]
    overrides = dict(overrides or {})
    if spec.requires_data_root and require_data and "data.root" not in overrides:
        raise UsageError(
            f"profile {profile!r} of {recipe.id} runs on real features: pass --data-root DIR "
            "(a directory in the precomp layout, see docs/data.md)"
        )
    run_seeds = tuple(seeds) if seeds else spec.seeds
    if not run_seeds:
        raise UsageError("no seeds to run")

    points = _points(recipe)
    cells: list[Cell] = []
    row_paper = {row.id: row.paper for row in recipe.rows}
    for row in sorted(recipe.rows, key=lambda r: bool(r.ensemble)):  # members before ensembles
        for point in points:
            cell_id = row.id if not point else f"{row.id}@{_point_id(point)}"
            values = recipe.paper_values.get(cell_id) or (row_paper[row.id] if not point else {})
            paper = normalized_values(recipe, values)
            config: CellConfig | None = None
            if row.ensemble:
                members = tuple(next(c for c in cells if c.id == m) for m in row.ensemble)
                cells.append(Cell(id=cell_id, row=row, point=point, config=members[0].config, paper=paper, members=members))
                continue
            if row.run:
                raw = merge_layers(
                    [
                        recipe.config,
                        spec.config,
                        expand_dotted(row.set),
                        expand_dotted(row.profiles.get(profile, {})),  # type: ignore[call-overload]
                        expand_dotted(recipe.cell_profiles.get(cell_id, {}).get(profile, {})),  # type: ignore[call-overload]
                        expand_dotted(point),
                        expand_dotted(overrides),
                    ]
                )
                raw.setdefault("eval", {})
                if isinstance(raw["eval"], dict):
                    raw["eval"].setdefault("protocols", list(recipe.protocols))
                config = validate_cell_config(raw, where=f"{where} (row {row.id!r}, profile {profile!r})")
            cells.append(Cell(id=cell_id, row=row, point=point, config=config, paper=paper))
    cells = resolved_order(recipe, _attach_needs(recipe, cells, where))
    known_cells = {c.id for c in cells}
    for section, ids in (("paper_values", recipe.paper_values), ("cell_profiles", recipe.cell_profiles)):
        for cell_id in ids:
            if cell_id not in known_cells:
                raise RecipeError(f"{section}: no cell {cell_id!r}", where=where)
    known_rows = {c.row.id for c in cells}
    for section, declared, what in (("near_chance", recipe.near_chance, "the paper's reason"),
                                    ("not_gated", recipe.not_gated, "the measured reason")):
        for cid, why in declared.items():
            if cid not in known_cells and cid not in known_rows:
                raise RecipeError(f"{section}: no row or cell {cid!r}", where=where)
            reasons = why if isinstance(why, dict) else {None: why}
            if not reasons:
                raise RecipeError(f"{section}.{cid}: name the protocols and give {what} for each", where=where)
            for proto, reason in reasons.items():
                if proto is not None and proto not in PROTOCOLS:
                    raise RecipeError(f"{section}.{cid}: unknown protocol {proto!r}; known: {', '.join(sorted(PROTOCOLS))}",
                                      where=where)
                if not reason.strip():
                    name = cid if proto is None else f"{cid}.{proto}"
                    raise RecipeError(f"{section}.{name}: give {what}", where=where)
    runnable_rows = {c.row.id for c in cells if c.runnable}
    for rid in recipe.ci_rows:
        if rid not in runnable_rows:
            raise RecipeError(f"ci_rows: {rid!r} is not a runnable row", where=where)
    for cell in cells:
        if _declared(recipe.near_chance, cell) and isinstance(_declared(recipe.not_gated, cell), str):
            raise RecipeError(f"{cell.id}: declared both near_chance and not_gated; the gate checks one or the other",
                              where=where)
    by_id = {c.id: c for c in cells}
    for claim in recipe.claims:
        proto = claim.protocol or recipe.default_protocol
        if proto not in recipe.protocols:
            raise RecipeError(f"claims.{claim.id}: protocol {proto!r} is not declared", where=where)
        for better, worse in claim.pairs:
            for cid in (better, worse):
                if cid not in known_cells:
                    raise RecipeError(f"claims.{claim.id}: no cell {cid!r}", where=where)
                _require_protocol(by_id[cid], proto, f"claims.{claim.id}", where)
    for fig in recipe.figures:
        if fig.protocol is not None:
            for cell in cells:
                if cell.row.id in fig.rows:
                    _require_protocol(cell, fig.protocol, f"figures.{fig.id}", where)
        for panel in fig.panels:
            if panel.cell not in known_cells:
                raise RecipeError(f"figures.{fig.id}.panels: no cell {panel.cell!r}", where=where)
    warnings, acknowledged = lint_recipe_full(recipe)
    return ResolvedRecipe(
        recipe=recipe,
        path=rpath,
        profile=profile,
        seeds=run_seeds,
        overrides=overrides,
        cells=cells,
        warnings=warnings,
        acknowledged=acknowledged,
    )


def _require_protocol(cell: Cell, protocol: str, what: str, where: str) -> None:
    """A claim or figure reads ``protocol`` of ``cell``: the cell must evaluate it (a row
    may narrow ``eval.protocols`` to what its table prints; an ensemble evaluates its
    first member's)."""
    if cell.config is not None and protocol not in cell.config.eval.protocols:
        raise RecipeError(f"{what}: cell {cell.id!r} does not evaluate protocol {protocol!r} "
                          f"(its eval.protocols: {', '.join(cell.config.eval.protocols)})", where=where)


def _attach_needs(recipe: Recipe, cells: list[Cell], where: str) -> list[Cell]:
    """Cells with their ``needs`` resolved to cells, in dependency order (a cycle is an error).

    A need names a row; for a grid row it is the row's cell at the same grid point
    (or its only cell). Ensembles are rebuilt over the resolved members.
    """
    from xmrbench.engine.miners import MINERS
    from xmrbench.recipe.config import format_validation_error

    by_row: dict[str, list[Cell]] = {}
    for cell in cells:
        by_row.setdefault(cell.row.id, []).append(cell)
    if not any(c.row.needs for c in cells):
        return cells

    def source_of(cell: Cell, row_id: str) -> Cell:
        candidates = by_row[row_id]
        same = [c for c in candidates if c.point == cell.point]
        return same[0] if same else candidates[0]

    done: dict[str, Cell] = {}
    visiting: set[str] = set()

    def build(cell: Cell) -> Cell:
        if cell.id in done:
            return done[cell.id]
        if cell.id in visiting:
            raise RecipeError(f"rows.{cell.row.id}.needs: a cycle of stages through {cell.id!r}", where=where)
        visiting.add(cell.id)
        needs = cell.row.needs
        out = cell
        if cell.members:
            out = replace(cell, members=tuple(build(m) for m in cell.members))
        elif needs is not None and cell.config is not None:
            init = build(source_of(cell, needs.init)) if needs.init else None
            artifacts = []
            for name, need in needs.artifacts.items():
                key = f"rows.{cell.row.id}.needs.artifacts.{name}"
                try:
                    miner = MINERS[need.miner]
                except XmrbenchError as exc:
                    raise RecipeError(exc.message, where=where, key=f"{key}.miner") from None
                try:
                    params = miner.Params(**need.params)
                except ValidationError as exc:
                    sub, msg = format_validation_error(exc, prefix=f"{key}.params.")
                    raise RecipeError(msg, where=where, key=sub) from None
                artifacts.append(ArtifactRef(name, build(source_of(cell, need.cell)), need.miner, params))
            out = replace(cell, needs=CellNeeds(init, tuple(artifacts)))
        visiting.discard(cell.id)
        done[cell.id] = out
        return out

    return [build(c) for c in cells]


def resolved_order(recipe: Recipe, cells: list[Cell]) -> list[Cell]:
    """Cells in the recipe's row order (ensembles may reference rows printed after them)."""
    rank = {row.id: i for i, row in enumerate(recipe.rows)}
    return sorted(cells, key=lambda c: rank[c.row.id])


def config_keys(resolved: ResolvedRecipe) -> list[str]:
    """Every dotted key of the runnable cells' configs (for sweep parameter lookup)."""
    keys: set[str] = set()
    for cell in resolved.runnable_cells():
        keys.update(flatten(cell.config.to_dict()))  # type: ignore[union-attr]
    return sorted(keys)


def resolve_param(name: str, keys: Sequence[str]) -> str:
    """A sweep parameter name -> the dotted key it names: exact, else a unique suffix."""
    if name in keys:
        return name
    matches = [k for k in keys if k == name or k.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"--{name}: no config key of this recipe is called {name!r}")
    raise UsageError(f"--{name}: ambiguous, it could be {', '.join(matches)}; use the full dotted key")


def with_axes(recipe: Recipe, grid: Mapping[str, Sequence[Any]], *, rows: Sequence[str] | None = None) -> Recipe:
    """A derived sweep recipe: ``recipe`` with extra grid axes (and optionally fewer rows)."""
    keep = [r for r in recipe.rows if r.run and (not rows or r.id in rows)]
    if rows:
        missing = sorted(set(rows) - {r.id for r in recipe.rows})
        if missing:
            raise UsageError(f"--rows: no row {missing[0]!r} in {recipe.id}")
    if not keep:
        raise UsageError(f"{recipe.id}: no runnable row to sweep")
    suffix = "_".join(f"{k.rsplit('.', 1)[-1]}" for k in grid)
    data = recipe.model_dump()
    data.update(
        id=f"{recipe.id}.sweep-{suffix}",
        kind="sweep",
        title=f"{recipe.title} (sweep over {', '.join(grid)})",
        rows=[r.model_dump() | {"paper": {}} for r in keep],
        grid={**recipe.grid, **{k: list(v) for k, v in grid.items()}},
        paper_values={},
        claims=[],
        ci_rows=[r for r in recipe.ci_rows if r in {k.id for k in keep}],
    )
    try:
        return Recipe(**data)
    except Exception as exc:  # pydantic error on a derived recipe = a bad sweep value
        raise ConfigError(f"invalid sweep: {exc}") from None
