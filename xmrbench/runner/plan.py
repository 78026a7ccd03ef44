"""``xmrbench plan``: what a reproduce would run and roughly how long it would take."""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from xmrbench.recipe.resolve import ResolvedRecipe
from xmrbench.store.store import ResultStore


def _run_seconds(doc) -> float:
    return float(doc.timing.get("train_s", 0.0) + doc.timing.get("eval_s", 0.0))


def _kind(config: dict | None) -> tuple[str, str, str]:
    """(dataset, model, method) of a stored run's config; ensembles are their own model."""
    if not config or "model" not in config:
        return ("", "ensemble", "")
    data = config.get("data") or {}
    method = config.get("method") or {}
    return (f"{data.get('name', '')}/{data.get('size', '')}", config["model"].get("name", "?"), method.get("name", ""))


# the model settings that decide how much work a run does (the width and depth of its
# encoders); two runs of one model that differ in them are of different sizes
SIZE_KEYS = ("embed_dim", "dim", "word_dim", "num_layers", "gcn_layers", "decoder_hidden")


def _size(config: dict | None) -> tuple:
    """The model's size settings of a stored run's config (empty for an ensemble)."""
    if not config or "model" not in config:
        return ()
    model = config["model"]
    return tuple((k, model[k]) for k in SIZE_KEYS if k in model)


def _pool_keys(cell_hash: str | None, config: dict | None, recipe_key: str | None) -> tuple:
    """The key of a run in each of ``_POOLS``, in order (None: not in that pool)."""
    dataset, model, method = _kind(config)
    return (cell_hash, (dataset, model, method, _size(config)), (dataset, model, method), (model, method), model,
            recipe_key)


# the pools an estimate is taken from, most specific first, and how the basis names them
_POOLS = ("the same cell", "the same model and size, method and dataset", "the same model, method and dataset",
          "the same model and method", "the same model", "this recipe")


@dataclass(frozen=True)
class Estimate:
    """One run of the plan: its ``state``, the estimated ``seconds`` (None: no stored
    timing to go by), whether they come from runs of the same model size (False: a
    larger model takes longer, a smaller one less, than the estimate says) and whether
    they come from other models' runs of the recipe (no run of this model is stored: a
    rough guess)."""

    cell: str
    seed: int
    state: str
    seconds: float | None
    same_size: bool
    other_model: bool = False


def estimate(resolved: ResolvedRecipe, store: ResultStore) -> tuple[list[Estimate], float | None, str]:
    """One :class:`Estimate` per run, the total for the runs not done, and its basis.

    Estimates are medians of stored run times of the same profile, most specific first:
    the same cell (its other seeds, in any recipe: a cell hash is its content), then runs
    of any recipe with the same model of the same size (:data:`SIZE_KEYS`), method and
    dataset, then of any size, the same model and method, the same model, and last every
    run of this recipe. A model's training time says little about another's (a VSRN run
    costs several SCAN runs), and an ensemble only evaluates its members, so every pool
    but the last keeps to one model; an estimate from the last, other models' runs of the
    recipe, says so (``other_model``), and one taken from runs of other sizes says so too
    (``same_size``); it is not scaled, since how the time grows with the width differs
    from model to model (a GRU's work grows with its square, an attention's exponentials
    linearly). Runs that evaluated a model another run trained count with that run's
    training time, which is what a run of theirs costs.
    """
    from xmrbench.runner.driver import plan_runs

    pools: list[dict] = [{} for _ in _POOLS]
    for recipe_id in store.recipe_ids():
        for _, doc, _problem in store.iter_results(recipe_id):
            if doc is None or doc.recipe.profile != resolved.profile:
                continue
            secs = _run_seconds(doc)
            keys = _pool_keys(doc.cell.hash, doc.config, resolved.id if recipe_id == resolved.id else None)
            for pool, key in zip(pools, keys):
                if key is not None:
                    pool.setdefault(key, []).append((secs, _size(doc.config)))
    rows = []
    total, unknown = 0.0, False
    used: dict[str, int] = {}
    cell_keys: dict[str, tuple[tuple, tuple]] = {}
    for cell, seed, state in plan_runs(resolved, store):
        if cell.id not in cell_keys:  # an ensemble carries its first member's config: pool it with ensembles
            config = None if cell.members or cell.config is None else cell.config.to_dict()
            cell_keys[cell.id] = (_pool_keys(cell.hash, config, resolved.id), _size(config))
        keys, size = cell_keys[cell.id]
        est, same_size, other_model = None, True, False
        for name, pool, key in zip(_POOLS, pools, keys):
            if pool.get(key):
                est = statistics.median(secs for secs, _ in pool[key])
                other_model = name == _POOLS[-1]  # no run of this model stored
                # sizes compare only within one model
                same_size = other_model or any(s == size for _, s in pool[key])
                if state != "done":
                    used[name] = used.get(name, 0) + 1
                break
        rows.append(Estimate(cell.id, seed, state, est, same_size, other_model))
        if state != "done":
            if est is None:
                unknown = True
            else:
                total += est
    if used:
        basis = "medians of stored run times of this profile: " + ", ".join(
            f"{n} run(s) from {name}" for name, n in sorted(used.items(), key=lambda kv: _POOLS.index(kv[0])))
    else:
        basis = "no stored timings"
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


def wall_seconds(seconds: Sequence[float], after: Sequence[Sequence[int]], jobs: int) -> float:
    """The wall time of a batch of runs on ``jobs`` workers, handed out as the executors'
    queue does (``runner/executors.TaskQueue``): whenever a worker is free it takes the
    first run, in the batch's order, whose needs (``after``: indexes of earlier runs of
    the batch) have finished. ``seconds`` are the runs' own times; starting workers and
    loading data are not counted."""
    if jobs < 1:
        raise ValueError(f"jobs must be positive, not {jobs}")
    pending = list(range(len(seconds)))
    finished: set[int] = set()
    running: list[tuple[float, int]] = []  # (finish time, run), a heap
    now = 0.0
    while pending or running:
        while len(running) < jobs:
            ready = next((i for i in pending if all(j in finished for j in after[i])), None)
            if ready is None:
                break
            pending.remove(ready)
            heapq.heappush(running, (now + seconds[ready], ready))
        if not running:  # nothing can start: a need outside the batch that never finishes
            break
        now, done = heapq.heappop(running)
        finished.add(done)
    return now
