"""ADAPT's recipes: every ADAPT row runs, the word-embedding rows of Table 4 read what
they say, the synthetic GloVe stand-in resolves, a missing GloVe file is a one-line
error, and the figures (Figure 2's curves, Figure 3's speed against accuracy) are drawn
from stored runs."""

from __future__ import annotations

import pytest
import torch

from xmrbench.recipe.resolve import resolve
from xmrbench.report.collect import collect
from xmrbench.report.plots import paper_figures, speed_accuracy_data
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

from support import REPO, cli

PNG = b"\x89PNG\r\n\x1a\n"
ADAPT_RECIPES = ("adapt-table1", "adapt-table2", "adapt-table3", "adapt-table4", "adapt-figure3")


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_every_adapt_row_runs(profile):
    for rid in ADAPT_RECIPES:
        res = resolve(REPO / "recipes" / "adapt" / f"{rid.split('-', 1)[1]}.yaml", profile=profile, require_data=False)
        adapt_cells = [c for c in res.cells if c.runnable and c.config.model.name == "adapt"]
        pending = [r.id for r in res.recipe.rows if not r.run and ("adapt" in r.id or r.id.startswith(("rand", "glove")))]
        assert adapt_cells and not pending, (rid, pending)
        for cell in adapt_cells:
            assert cell.config.method.name == "adapt" and cell.config.loss is None
    table1 = resolve(REPO / "recipes/adapt/table1.yaml", profile=profile, require_data=False)
    assert [m.id for m in table1.cell("adapt-ens").members] == ["adapt-t2i", "adapt-i2t"]


def test_word_embedding_rows_of_table4():
    res = resolve(REPO / "recipes/adapt/table4.yaml", profile="quick")
    got = {c.id: (c.config.model.params.embeddings, c.config.model.params.train_glove, c.config.data.word_vectors)
           for c in res.cells}
    assert got == {
        "rand-trained": ("rand", False, None),
        "rand-trained-glove-trained": ("rand+glove", True, "synthetic:32"),
        "glove-fixed": ("glove", False, "synthetic:32"),
        "rand-trained-glove-fixed": ("rand+glove", False, "synthetic:32"),
    }
    lambdas = {c.id: (c.config.model.params.lambda_fovea, c.config.model.params.learn_lambda, c.config.model.params.fovea)
               for c in resolve(REPO / "recipes/adapt/table3.yaml", profile="smoke").cells}
    assert lambdas["adapt-t2i-lambda1"] == (1.0, False, True)
    assert lambdas["adapt-t2i-lambda-learned"] == (10.0, True, True)
    assert lambdas["adapt-t2i-no-fovea"][2] is False
    assert resolve(REPO / "recipes/adapt/table2.yaml", profile="smoke").cell("adapt-i2t").config.model.params.lambda_fovea == 5.0


RECIPE = """id: adapt-figures-test
paper: adapt
table: T
kind: figure
title: t
columns: [i2t_r1, t2i_r1, rsum]
protocols:
  test: {dataset: synthetic, images: 100}
config:
  model: {name: adapt, image_input: regions, embed_dim: 8, word_dim: 8, glove_dim: 8}
  method: {name: adapt}
  loss: null
  data: {word_vectors: "synthetic:8", train_images: 100}
  train: {epochs: 2, batch_size: 25, lr: 0.01}
  eval: {dev_images: 50}
profiles:
  smoke: {seeds: [0], config: {data: {size: tiny}}}
rows:
  - {id: t2i, label: T2I, set: {model.learn_lambda: true}}
  - {id: i2t, label: I2T, set: {model.direction: i2t, model.embed_dim: 16}}
  - {id: ens, label: ENS, ensemble: [t2i, i2t]}
figures:
  - {id: f2, kind: curves, title: dev R@1, series: [dev_i2t_r1, dev_t2i_r1], rows: [t2i, i2t]}
  - {id: f3, kind: speed_accuracy, title: speed, rows: [t2i, i2t, ens], hlines: {paper SCAN: 40.0}}
"""


@pytest.mark.slow
def test_adapt_trains_and_its_figures_are_drawn(tmp_path, capsys):
    path = tmp_path / "adapt-figs.yaml"
    path.write_text(RECIPE)
    store = ResultStore(tmp_path / "store")
    reproduce(resolve(path, profile="smoke"), store, device=torch.device("cpu"))
    rep = collect(str(path), store)
    docs = {c.id: c.docs[0] for c in rep.cells}
    assert docs["t2i"].timing["eval_test_s"] > 0 and docs["t2i"].n_params > 0
    assert docs["i2t"].n_params > docs["t2i"].n_params  # the wider joint space
    # the learned lambda moved from its initial 10 (the gradient reaches it in training)
    state = torch.load(store.model_path(rep.recipe.id, "t2i", rep.resolved.cell("t2i").hash, 0), weights_only=True)
    assert float(state["state_dict"]["lam"]) != 10.0
    data = speed_accuracy_data(rep, rep.recipe.figures[1])
    assert [c.id for c, *_ in data] == ["t2i", "i2t"]  # an ensemble records no evaluation time of its own
    for cell, seconds, means, n_params in data:
        assert seconds == docs[cell.id].timing["eval_test_s"] and n_params == docs[cell.id].n_params
        assert means == {k: docs[cell.id].metrics["test"][k] for k in ("i2t_r1", "t2i_r1")}
    files = paper_figures(rep, tmp_path / "figs")
    assert [f.name for f in files] == ["adapt-figures-test-f2.png", "adapt-figures-test-f3.png"]
    assert all(f.read_bytes()[:8] == PNG and f.stat().st_size > 5000 for f in files)
    code, out, err = cli(["report", str(path), "--results", str(store.root)], capsys)
    assert code == 0, err


def test_word_vector_specs_and_a_missing_glove_are_one_line_errors(tmp_path, capsys):
    text = RECIPE.replace('"synthetic:8"', '"synthetic:x"')
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = cli(["reproduce", str(path), "--profile", "smoke", "--rows", "t2i", "--results",
                        str(tmp_path / "s1"), "--no-report", "--quiet"], capsys)
    assert code != 0 and "synthetic:DIM" in err and "Traceback" not in err
    path.write_text(RECIPE.replace('  data: {word_vectors: "synthetic:8", train_images: 100}\n',
                                   "  data: {train_images: 100}\n"))
    code, _, err = cli(["reproduce", str(path), "--profile", "smoke", "--rows", "t2i", "--results",
                        str(tmp_path / "s2"), "--no-report", "--quiet"], capsys)
    assert code != 0 and "needs pretrained word vectors" in err and "Traceback" not in err


def test_a_dev_protocol_reports_the_whole_validation_split(tmp_path):
    """Tables 3 and 4 print validation numbers: the protocol "dev" is the whole dev split,
    not the first eval.dev_images images the model was selected on (which stay in the
    curves), and it carries its fingerprint like any protocol."""
    from support import tiny_recipe

    text = tiny_recipe("dev-protocol-test", "  - {id: a, label: A}\n  - {id: b, label: B}\n  - {id: ens, label: E, ensemble: [a, b]}",
                       train_extra=", epochs: 1")
    text = text.replace("protocols:\n  test: {dataset: synthetic, images: 100}\n",
                        "protocols:\n  dev: {dataset: synthetic, split: dev, images: 100}\n")
    text = text.replace("  loss:", "  eval: {dev_images: 20}\n  loss:", 1)
    path = tmp_path / "dev.yaml"
    path.write_text(text)
    store = ResultStore(tmp_path / "store")
    reproduce(resolve(path, profile="smoke"), store, device=torch.device("cpu"))
    rep = collect(str(path), store)
    for cell in rep.cells:
        doc = cell.docs[0]
        assert set(doc.metrics) == {"dev"} and "dev" in doc.protocols, cell.id
        assert doc.protocols["dev"]["images"] == 100, cell.id  # not the 20 selection images
        if cell.id != "ens":
            assert doc.metrics["dev"]["rsum"] != doc.curves["dev_rsum"][-1]
