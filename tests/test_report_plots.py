"""Figures: written as valid PNG files naming the dataset ours was measured on."""

from __future__ import annotations

import torch

from xmrbench.recipe.resolve import resolve, with_axes
from xmrbench.report.collect import collect
from xmrbench.report.plots import all_figures
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

RECIPE = """
id: plot-test
paper: two_branch
table: T
title: plot test
columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10]
protocols:
  test: {dataset: flickr30k, images: 1000}
config:
  model: {name: two_branch_embedding, hidden_dim: 32, embed_dim: 16}
  loss: {name: bidirectional_ranking, reduction: mean}
  train: {optimizer: adam, lr: 0.001, epochs: 2, batch_size: 200}
profiles:
  smoke: {seeds: [0, 1], config: {data: {size: tiny}}}
rows:
  - {id: a, label: A, paper: {test: [33.5, 61.7, 73.6, 21.0, 47.4, 60.5]}}
  - {id: b, label: B, set: {model.linear: true}}
"""

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_are_written(tmp_path):
    path = tmp_path / "plot.yaml"
    path.write_text(RECIPE)
    store = ResultStore(tmp_path / "store")
    reproduce(resolve(path, profile="smoke"), store, device=torch.device("cpu"))
    rep = collect(str(path), store)
    files = all_figures(rep, tmp_path / "figs")
    assert {f.name for f in files} == {"plot-test-curves.png", "plot-test-ranks.png", "plot-test-paper-vs-ours.png"}
    for f in files:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 5000


def test_sweep_figure(tmp_path):
    path = tmp_path / "plot.yaml"
    path.write_text(RECIPE)
    from xmrbench.recipe.load import load_recipe

    recipe, _ = load_recipe(path)
    derived = with_axes(recipe, {"loss.margin": [0.05, 0.2]}, rows=["a"])
    store = ResultStore(tmp_path / "store")
    resolved = resolve(derived, profile="smoke", seeds=[0], path=path)
    reproduce(resolved, store, device=torch.device("cpu"))
    from xmrbench.report.collect import collect_resolved

    rep = collect_resolved(resolved, store)
    files = all_figures(rep, tmp_path / "figs")
    assert any(f.name.endswith("-sweep.png") for f in files)


def test_report_of_a_sweep_is_rebuilt_from_the_store(tmp_path):
    path = tmp_path / "plot.yaml"
    path.write_text(RECIPE)
    from xmrbench.recipe.load import load_recipe

    recipe, _ = load_recipe(path)
    derived = with_axes(recipe, {"loss.margin": [0.05, 0.2]}, rows=["a"])
    store = ResultStore(tmp_path / "store")
    reproduce(resolve(derived, profile="smoke", seeds=[0], path=path), store, device=torch.device("cpu"))
    rep = collect(derived.id, store)
    assert [c.id for c in rep.cells] == ["a@margin=0.05", "a@margin=0.2"]
    assert all(c.seeds == [0] for c in rep.cells)
