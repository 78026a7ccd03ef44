"""``xmrbench plan`` takes a run's time estimate from stored runs of the same model, in
any recipe of the store, and never from another model's runs."""

from __future__ import annotations

import json

import pytest

from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import reproduce
from xmrbench.runner.plan import estimate
from xmrbench.store.store import ResultStore

from support import tiny_recipe

FIRST = """
  - {id: emb, label: embedding}
  - {id: cca, label: CCA, set: {model.name: cca, model.dim: 4, loss: null}}
"""
SECOND = """
  - {id: emb-wide, label: embedding, set: {model.embed_dim: 24}}
  - {id: cca-small, label: CCA, set: {model.name: cca, model.dim: 3, loss: null}}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def _set_times(store: ResultStore, recipe_id: str, seconds: dict[str, float]) -> None:
    for path in store.recipe_dir(recipe_id).glob("*.json"):
        doc = json.loads(path.read_text())
        if doc.get("kind") != "xmrbench.result":
            continue
        doc["timing"] = {"train_s": seconds[doc["cell"]["id"]], "eval_s": 0.0}
        path.write_text(json.dumps(doc))


def test_estimates_come_from_the_same_model_in_any_recipe(tmp_path):
    (tmp_path / "first.yaml").write_text(tiny_recipe("tiny-first", FIRST, seeds="[0, 1]"))
    (tmp_path / "second.yaml").write_text(tiny_recipe("tiny-second", SECOND, seeds="[0, 1]"))
    first, second = resolve(tmp_path / "first.yaml", profile="smoke"), resolve(tmp_path / "second.yaml", profile="smoke")
    store = ResultStore(tmp_path / "s")
    assert not reproduce(first, store, device="cpu").failed
    _set_times(store, first.id, {"emb": 100.0, "cca": 2.0})

    rows, total, basis = estimate(second, store)
    est = {(cell, seed): e for cell, seed, _state, e in rows}
    # no run of this recipe is stored: each row is estimated from its own model's runs
    assert est[("emb-wide", 0)] == est[("emb-wide", 1)] == 100.0
    assert est[("cca-small", 0)] == est[("cca-small", 1)] == 2.0
    assert total == 204.0 and "the same model, method and dataset" in basis

    # the same cell's other seeds come first
    assert not reproduce(second, store, device="cpu").failed
    _set_times(store, second.id, {"emb-wide": 50.0, "cca-small": 1.0})
    widened = resolve(tmp_path / "second.yaml", profile="smoke", seeds=(0, 1, 2))
    rows, total, basis = estimate(widened, store)
    todo = {cell: e for cell, seed, state, e in rows if state != "done"}
    assert todo == {"emb-wide": 50.0, "cca-small": 1.0} and total == 51.0 and "the same cell" in basis
