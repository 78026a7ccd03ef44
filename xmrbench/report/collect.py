"""Join a recipe (paper numbers, claims) with the results store (our numbers).

For each cell the report uses the results whose cell hash matches the recipe as
resolved now for the chosen profile; if there are none (results produced with
``--set`` overrides or by an older version of the recipe) it falls back to the
group of results with the most seeds and marks the cell as *config differs*.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmrbench.core.convergence import Convergence, of_members
from xmrbench.core.metrics import keys as K
from xmrbench.errors import XmrbenchError
from xmrbench.papers import PAPERS
from xmrbench.provenance.env import machine_label
from xmrbench.provenance.fingerprint import compare, paper_fingerprint
from xmrbench.recipe.resolve import ResolvedRecipe, resolve
from xmrbench.recipe.schema import PROFILES
from xmrbench.stats.claims import ClaimVerdict, Side, judge
from xmrbench.store.schema import ResultDoc
from xmrbench.store.store import ResultStore


@dataclass
class Ours:
    mean: float
    std: float
    n: int


@dataclass
class CellReport:
    id: str
    label: str
    runnable: bool
    pending: str | None
    source: str | None
    paper: dict[str, dict[str, float | None]]
    ours: dict[str, dict[str, Ours]] = field(default_factory=dict)  # protocol -> metric -> Ours
    seeds: list[int] = field(default_factory=list)
    docs: list[ResultDoc] = field(default_factory=list, repr=False)  # the results behind ``ours``
    config_differs: bool = False
    convergence: dict[int, Convergence | None] = field(default_factory=dict)  # seed -> record (None: unknown)
    protocols: tuple[str, ...] | None = None  # what its config evaluates (a row may narrow it; None: not run)

    def evaluates(self, protocol: str) -> bool:
        """Whether this cell's runs report ``protocol`` (a row may narrow ``eval.protocols``
        to what its table prints)."""
        return self.protocols is None or protocol in self.protocols

    @property
    def unconverged(self) -> str | None:
        """Why this cell's runs have not all converged (None: every run has)."""
        behind = {s: c for s, c in self.convergence.items() if c is None or not c.converged}
        if not behind:
            return None
        first = next(iter(behind.values()))
        why = first.reason if first is not None else "no convergence record"
        return f"{len(behind)} of {len(self.convergence)} run(s), e.g. seed {next(iter(behind))}: {why}"
    comparable: dict[str, tuple[bool, list[str], list[str]]] = field(default_factory=dict)


@dataclass
class TableReport:
    resolved: ResolvedRecipe
    cells: list[CellReport]
    claims: list[ClaimVerdict]
    datasets: list[str]
    machines: list[str]
    seeds: list[int]
    commits: list[str]
    problems: list[str]  # corrupt files and similar, to show the user
    n_results: int
    allow_unconverged: bool = False  # claims judged with runs that have not converged

    @property
    def recipe(self):
        return self.resolved.recipe

    @property
    def paper(self):
        return PAPERS[self.recipe.paper]

    def metric_columns(self) -> list[str]:
        cols = list(self.recipe.columns)
        if K.RSUM not in cols and all(k in cols for k in K.RECALL_KEYS):
            cols.append(K.RSUM)
        return cols

    def comparable_any(self, protocol: str) -> bool:
        return any(c.comparable.get(protocol, (False,))[0] for c in self.cells if c.ours.get(protocol))

    def comparability_notes(self, protocol: str) -> list[str]:
        notes: set[str] = set()
        for c in self.cells:
            ok, breaks, caveats = c.comparable.get(protocol, (True, [], []))
            notes.update(breaks)
            notes.update(f"(setup) {x}" for x in caveats)
        return sorted(notes)


def _pick_profile(recipe, docs: list[ResultDoc]) -> str:
    """The most paper-like profile that has results; else quick (or the first defined)."""
    have = {d.recipe.profile for d in docs}
    for profile in ("full", "quick", "smoke"):
        if profile in have:
            return profile
    return "quick" if "quick" in recipe.profiles else next(iter(recipe.profiles), "quick")


def collect(
    recipe_ref: str, store: ResultStore, *, profile: str | None = None, allow_unconverged: bool = False
) -> TableReport:
    """Everything a paper-vs-ours table needs, for one recipe (id or path)."""
    from xmrbench.errors import RecipeError
    from xmrbench.recipe.load import load_recipe

    try:
        recipe, path = load_recipe(recipe_ref)
    except RecipeError:
        stored = _stored_recipe(store, str(recipe_ref))  # a derived (sweep) recipe has no file
        if stored is None:
            raise
        recipe, path = stored
    if profile is None:
        profile = _pick_profile(recipe, [d for _, d, _ in store.iter_results(recipe.id) if d is not None])
    if profile not in PROFILES:
        raise XmrbenchError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    resolved = resolve(recipe, profile=profile, path=path, require_data=False)
    return collect_resolved(resolved, store, allow_unconverged=allow_unconverged)


def _stored_recipe(store: ResultStore, recipe_id: str):
    """The newest resolved recipe saved beside a recipe's results (sweeps live only there)."""
    import json
    from pathlib import Path

    from xmrbench.recipe.schema import Recipe

    folder = store.recipe_dir(recipe_id) / "resolved"
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    for path in reversed(files):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Recipe(**data["recipe"]), Path(data.get("path", path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def collect_resolved(resolved: ResolvedRecipe, store: ResultStore, *, allow_unconverged: bool = False) -> TableReport:
    """The report of an already resolved recipe (e.g. a derived sweep recipe).

    A claim pair with a cell whose runs have not all converged is untested, unless
    ``allow_unconverged`` (the report then says so).
    """
    recipe, profile = resolved.recipe, resolved.profile
    docs: list[ResultDoc] = []
    problems: list[str] = []
    for p, doc, problem in store.iter_results(recipe.id):
        if doc is None:
            problems.append(f"{p}: {problem} (ignored; re-run reproduce to recompute it)")
        elif doc.recipe.profile == profile and (changed := doc.changed_files()):
            problems.append(f"{p}: {'; '.join(changed)} (ignored; re-run reproduce to recompute it)")
        elif doc.recipe.profile == profile:
            docs.append(doc)
    by_cell: dict[str, list[ResultDoc]] = defaultdict(list)
    for d in docs:
        by_cell[d.cell.id].append(d)

    cells: list[CellReport] = []
    sides: dict[tuple[str, str, str], Side] = {}
    fingerprints: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in resolved.cells:
        rep = CellReport(cell.id, cell.label, cell.runnable, cell.row.pending, cell.row.source, cell.paper,
                         protocols=cell.config.eval.protocols if cell.config is not None else None)
        group = by_cell.get(cell.id, [])
        chosen = [d for d in group if d.cell.hash == cell.hash]
        if not chosen and group:
            hashes = defaultdict(list)
            for d in group:
                hashes[d.cell.hash].append(d)
            chosen = max(hashes.values(), key=lambda g: (len(g), max(x.created for x in g)))
            rep.config_differs = True
        seen: dict[int, ResultDoc] = {}
        for d in sorted(chosen, key=lambda x: x.created):
            seen[d.seed] = d  # newest wins if a seed appears twice
        chosen = [seen[s] for s in sorted(seen)]
        rep.seeds = sorted(seen)
        rep.docs = chosen
        rep.convergence = {d.seed: d.convergence_record() for d in chosen}
        if cell.members:  # an ensemble written before records existed: judged by its members
            by_id = {c.id: c for c in cells}
            for seed, record in rep.convergence.items():
                if record is None and all(m.id in by_id for m in cell.members):
                    rep.convergence[seed] = of_members({m.id: by_id[m.id].convergence.get(seed) for m in cell.members})
        for proto in recipe.protocols:
            with_proto = [d for d in chosen if proto in d.metrics]
            if not with_proto:
                continue
            keys = sorted({k for d in with_proto for k in d.metrics[proto]})
            rep.ours[proto] = {}
            for key in keys:
                vals = np.array([d.metrics[proto][key] for d in with_proto if key in d.metrics[proto]], dtype=float)
                rep.ours[proto][key] = Ours(float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals))
                sides[(cell.id, key, proto)] = Side(
                    {d.seed: d.metrics[proto][key] for d in with_proto if key in d.metrics[proto]},
                    {d.seed: d.ranks[proto] for d in with_proto if proto in d.ranks},
                )
            fp = with_proto[-1].protocols.get(proto, {})
            fingerprints[(cell.id, proto)] = fp
            rep.comparable[proto] = compare(paper_fingerprint(recipe.protocols[proto]), fp)
        cells.append(rep)

    comparable_pairs: dict[tuple[str, str, str], bool] = {}
    claim_specs = []
    for claim in recipe.claims:
        proto = claim.protocol or recipe.default_protocol
        for better, worse in claim.pairs:
            fa, fb = fingerprints.get((better, proto)), fingerprints.get((worse, proto))
            if fa is not None and fb is not None:
                comparable_pairs[(better, worse, proto)] = compare(fa, fb)[0]
        claim_specs.append((claim.id, claim.text, claim.metric, proto, claim.pairs, claim.kind, claim.margin))
    unconverged = {} if allow_unconverged else {c.id: c.unconverged for c in cells if c.unconverged}
    verdicts = judge(claim_specs, sides, comparable=comparable_pairs, unconverged=unconverged)

    all_docs = [d for c in by_cell.values() for d in c]
    datasets = sorted({f"{d.dataset.name} ({d.dataset.fingerprint[:10]})" for d in all_docs})
    machines = sorted({machine_label(d.env) for d in all_docs})
    commits = sorted({str(d.env.get("git_commit") or "?")[:12] for d in all_docs})
    seeds = sorted({s for c in cells for s in c.seeds})
    return TableReport(resolved, cells, verdicts, datasets, machines, seeds, commits, problems, len(all_docs),
                       allow_unconverged)
