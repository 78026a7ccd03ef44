"""``xmrbench plan``: what a reproduce would run and roughly how long it would take."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from xmrbench.recipe.resolve import ResolvedRecipe
from xmrbench.store.store import ResultStore


def _run_seconds(doc) -> float:
    return float(doc.timing.get("train_s", 0.0) + doc.timing.get("eval_s", 0.0))


def estimate(resolved: ResolvedRecipe, store: ResultStore) -> tuple[list[tuple[str, int, str, float | None]], float | None, str]:
    """Rows (cell, seed, state, estimated seconds) and the total for the runs not done.

    Estimates come from stored timings, most specific first: the same cell (other
    seeds), then runs of this recipe and profile with the same model, then every run
    of this recipe and profile.
    """
    from xmrbench.runner.driver import plan_runs

    by_hash: dict[str, list[float]] = {}
    by_model: dict[str, list[float]] = {}
    everything: list[float] = []
    for _, doc, _problem in store.iter_results(resolved.id):
        if doc is None or doc.recipe.profile != resolved.profile:
            continue
        secs = _run_seconds(doc)
        by_hash.setdefault(doc.cell.hash, []).append(secs)
        by_model.setdefault(doc.config.get("model", {}).get("name", "?"), []).append(secs)
        everything.append(secs)
    rows = []
    total, unknown = 0.0, False
    for cell, seed, state in plan_runs(resolved, store):
        est = None
        for pool in (by_hash.get(cell.hash or ""), by_model.get(cell.config.model.name if cell.config else ""), everything):
            if pool:
                est = statistics.median(pool)
                break
        rows.append((cell.id, seed, state, est))
        if state != "done":
            if est is None:
                unknown = True
            else:
                total += est
    basis = f"median of {len(everything)} stored run time(s) of this recipe and profile" if everything else "no stored timings"
    return rows, (None if unknown else total), basis


@dataclass
class PlannedArtifact:
    key: str
    miner: str
    source: str  # the cell whose model it is mined from
    seed: int
    state: str  # done | missing
    used_by: list[str] = field(default_factory=list)


def artifact_plan(resolved: ResolvedRecipe, store: ResultStore) -> list[PlannedArtifact]:
    """Every artifact the runnable cells need, once per (content key, seed), with its state
    and the cells that share it."""
    from xmrbench.runner.stages import artifact_state

    out: dict[str, PlannedArtifact] = {}
    for cell in resolved.runnable_cells():
        for ref in cell.needs.artifacts if cell.needs is not None else ():
            for seed in resolved.seeds:
                key = ref.key(seed)
                if key not in out:
                    out[key] = PlannedArtifact(key, ref.miner, ref.source.id, seed, artifact_state(store, ref, seed))
                out[key].used_by.append(cell.id)
    return list(out.values())
