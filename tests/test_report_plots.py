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


# the plot recipe's header with a grid of two learning rates and the figures to draw
FIGURES = RECIPE.split("profiles:")[0].replace("id: plot-test", "id: figure-test").replace("epochs: 2", "epochs: 1") + """profiles:
  smoke: {seeds: [0, 1], config: {data: {size: tiny}}}
grid:
  train.lr: [0.001, 0.003]
rows:
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
figures:
  - {id: lines, kind: lines, title: R@1 against lr, metric: t2i_r1, x: train.lr, rows: [a]}
  - id: maps
    kind: tsne
    title: maps
    images: 12
    panels:
      - {cell: "a@lr=0.001", title: "(a) A"}
      - {cell: "b@lr=0.003", title: "(b) B"}
"""


def _figure_recipe(tmp_path, text: str = FIGURES):
    path = tmp_path / "figure.yaml"
    path.write_text(text)
    return path


def test_declared_figures_are_drawn_from_the_runs_and_their_stored_models(tmp_path):
    from xmrbench.report.plots import paper_figures, tsne_points
    from xmrbench.runner.run import DataCache
    from xmrbench.runner.stored import stored_embedder

    path = _figure_recipe(tmp_path)
    store = ResultStore(tmp_path / "store")
    reproduce(resolve(path, profile="smoke"), store, device=torch.device("cpu"))
    rep = collect(str(path), store)
    assert paper_figures(rep, tmp_path / "none") == [tmp_path / "none" / "figure-test-lines.png"]  # tsne needs an embedder
    files = paper_figures(rep, tmp_path / "figs", stored_embedder(store, DataCache()))
    assert [f.name for f in files] == ["figure-test-lines.png", "figure-test-maps.png"]
    for f in files:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 5000
    # the t-SNE map is seeded: the same embeddings give the same coordinates
    gen = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 4, generator=gen).numpy(), torch.randn(12, 4, generator=gen).numpy()
    a, b = tsne_points(img, txt, seed=0), tsne_points(img, txt, seed=0)
    assert a[0].shape == (6, 2) and a[1].shape == (12, 2)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    # a panel whose run has no stored model is left out; with none left, no map
    for cell_id in ("a@lr=0.001", "b@lr=0.003"):
        cell = rep.resolved.cell(cell_id)
        store.model_path(rep.recipe.id, cell.id, cell.hash, 0).unlink()
    assert [f.name for f in paper_figures(rep, tmp_path / "after", stored_embedder(store, DataCache()))] == ["figure-test-lines.png"]


def test_bad_figure_declarations_are_refused(tmp_path):
    import pytest

    from xmrbench.errors import RecipeError

    cases = {
        "x: train.lr, rows: [a]": ("x: data.size, rows: [a]", "not a grid key"),
        "rows: [a]}": ("rows: [c]}", "not a runnable row"),
        '"(a) A"}': ('"(a) A"}\n      - {cell: "c@lr=0.001", title: c}', "no cell"),
        "metric: t2i_r1": ("metric: t2i_r99", "unknown metric"),
    }
    for old, (new, message) in cases.items():
        path = _figure_recipe(tmp_path, FIGURES.replace(old, new, 1))
        with pytest.raises(RecipeError, match=message):
            resolve(path, profile="smoke")
