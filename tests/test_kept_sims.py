"""Kept similarity matrices: a member run scheduled with its ensemble keeps its final
image-text matrices; the ensemble averages them instead of scoring the member again,
with the same numbers to the last bit, and the kept folder is removed once the
ensemble is stored. A kept folder that does not belong to the stored model is ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmrbench.recipe.resolve import resolve
from xmrbench.runner import kept_sims, run
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

RECIPE = """id: tiny-kept
paper: two_branch
table: T
title: kept matrices
columns: [i2t_r1, t2i_r1, rsum]
protocols:
  test: {dataset: synthetic, images: 100}
  testall_5fold: {dataset: synthetic, images: 500, folds: 5}
config:
  model: {name: two_branch_embedding, hidden_dim: 32, embed_dim: 16}
  loss: {name: bidirectional_ranking, reduction: mean}
  train: {optimizer: adam, lr: 0.001, epochs: 1, batch_size: 200}
profiles:
  smoke: {seeds: [0, 1], config: {data: {size: tiny}}}
rows:
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ab, label: A+B, ensemble: [a, b]}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny-kept.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture
def used(monkeypatch) -> list[tuple[str, bool]]:
    """(protocol, kept matrices found) of every member the ensembles average."""
    calls: list[tuple[str, bool]] = []
    real = kept_sims.load_kept

    def spy(folder, protocol, **kw):
        got = real(folder, protocol, **kw)
        calls.append((protocol, got is not None))
        return got

    monkeypatch.setattr(run, "load_kept", spy)
    return calls


def _ensemble_docs(store: ResultStore, resolved) -> dict[int, tuple[dict, dict]]:
    cell = resolved.cell("ab")
    out = {}
    for seed in resolved.seeds:
        doc = store.status(resolved.id, cell.id, cell.hash, seed).doc
        out[seed] = (doc.metrics, doc.ranks)
    return out


def test_ensemble_averages_kept_matrices_bit_for_bit(recipe, tmp_path, used):
    resolved = resolve(recipe, profile="smoke")
    store = ResultStore(tmp_path / "kept")
    summary = reproduce(resolved, store, device="cpu")
    assert not summary.failed and len(summary.ran) == 6
    # both members' matrices were kept and used, for both protocols and seeds
    assert sorted(used) == sorted((p, True) for p in ("test", "testall_5fold") for _ in range(4))
    assert not (store.recipe_dir(resolved.id) / ".sims").exists(), "kept matrices left behind"
    kept_numbers = _ensemble_docs(store, resolved)

    # the same ensembles scored from the stored models (nothing kept: the members are done)
    other = ResultStore(tmp_path / "rescored")
    for seed in resolved.seeds:
        for cid in ("a", "b"):
            cell = resolved.cell(cid)
            for src, dst in ((store.result_path, other.result_path), (store.model_path, other.model_path)):
                target = dst(resolved.id, cid, cell.hash, seed)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(src(resolved.id, cid, cell.hash, seed).read_bytes())
    used.clear()
    summary = reproduce(resolved, other, device="cpu")
    assert sorted(summary.ran) == [("ab", 0), ("ab", 1)]
    assert used and not any(found for _, found in used)
    assert _ensemble_docs(other, resolved) == kept_numbers  # metrics and ranks, exactly


def test_beyond_the_budget_nothing_is_kept_and_the_ensemble_scores_again(recipe, tmp_path, used, monkeypatch):
    monkeypatch.setattr(kept_sims, "KEEP_BUDGET_BYTES", 150_000)  # less than the smallest set (200 kB)
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    store = ResultStore(tmp_path / "s")
    summary = reproduce(resolved, store, device="cpu")
    assert not summary.failed and ("ab", 0) in summary.ran
    assert used and not any(found for _, found in used)
    assert not (store.recipe_dir(resolved.id) / ".sims").exists()


def test_a_member_run_alone_keeps_nothing(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    store = ResultStore(tmp_path / "s")
    summary = reproduce(resolved.restricted_to_rows(["a"]), store, device="cpu")
    assert summary.ran == [("a", 0)]
    assert not (store.recipe_dir(resolved.id) / ".sims").exists()


def test_kept_matrices_of_another_model_are_ignored(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    store = ResultStore(tmp_path / "s")
    reproduce(resolved, store, device="cpu")
    cell = resolved.cell("a")
    model = store.model_path(resolved.id, "a", cell.hash, 0)
    folder = tmp_path / "kept"
    keeper = kept_sims.SimsKeeper(tmp_path / "work", folder)
    import torch

    mats = [torch.full((20, 100), float(k)) for k in range(5)]
    keeper("testall_5fold", mats)
    keeper("test", [torch.ones(100, 500)])
    keeper.seal(model)
    meta = json.loads((folder / kept_sims.KEPT_FILE).read_text())
    assert meta["protocols"] == {"testall_5fold": [5, 20, 100], "test": [1, 100, 500]}
    got = kept_sims.load_kept(folder, "testall_5fold", model_path=model, images=100, captions=500, folds=5)
    assert got is not None and all(torch.equal(g, m) for g, m in zip(got, mats))
    # another split size, another fold count, an unknown protocol: not these matrices
    assert kept_sims.load_kept(folder, "testall_5fold", model_path=model, images=200, captions=1000, folds=5) is None
    assert kept_sims.load_kept(folder, "testall_5fold", model_path=model, images=100, captions=500, folds=1) is None
    assert kept_sims.load_kept(folder, "dev", model_path=model, images=100, captions=500, folds=1) is None
    # the member was recomputed since: its model file changed
    model.write_bytes(model.read_bytes() + b"\0")
    assert kept_sims.load_kept(folder, "testall_5fold", model_path=model, images=100, captions=500, folds=5) is None
    # a damaged kept.json
    (folder / kept_sims.KEPT_FILE).write_text("{not json")
    assert kept_sims.load_kept(folder, "test", model_path=model, images=100, captions=500, folds=1) is None


def test_left_over_matrices_are_removed_once_the_ensemble_is_stored(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    store = ResultStore(tmp_path / "s")
    reproduce(resolved, store, device="cpu")
    folder = kept_sims.kept_dir(store, resolved.id, resolved.cell("a"), 0)
    folder.mkdir(parents=True)  # as an ensemble run killed after storing its result leaves it
    (folder / kept_sims.KEPT_FILE).write_text("{}")
    summary = reproduce(resolved, store, device="cpu")
    assert not summary.ran and not folder.exists()
