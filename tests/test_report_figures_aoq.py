"""The AOQ figure kinds: ``curves`` (R@1 per epoch, Figure 4) and ``cross_rank`` (positive
pairs per cross-retrieval rank bin, Figure 6), their declarations, the rank computation
against a naive loop, and the figures drawn from stored runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.core.metrics.cross_rank import CROSS_RANK_BINS, cross_rank_counts, cross_retrieval_ranks
from xmrbench.core.metrics.retrieval import retrieval_metrics, t2i_ranks
from xmrbench.errors import RecipeError
from xmrbench.recipe.resolve import resolve
from xmrbench.report.collect import collect
from xmrbench.report.plots import cross_rank_data, curves_data, paper_figures
from xmrbench.runner.driver import reproduce
from xmrbench.runner.run import DataCache
from xmrbench.runner.stored import stored_scorer
from xmrbench.store.store import ResultStore

from support import cli, tiny_recipe

PNG = b"\x89PNG\r\n\x1a\n"

ROWS = """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ens, label: A+B, ensemble: [a, b]}
"""
FIGURES = """figures:
  - {id: r1, kind: curves, title: R@1 per epoch, series: [dev_i2t_r1, dev_t2i_r1], rows: [a, b, ens]}
  - {id: cross, kind: cross_rank, title: cross-retrieval ranks, rows: [a, ens]}
"""
RECIPE = tiny_recipe("aoq-figures-test", ROWS, epochs=2, seeds="[0, 1]", extra=FIGURES)


def _naive(sims: np.ndarray, c: int) -> np.ndarray:
    """The cross rank pair by pair, straight from the definition (ties count against)."""
    n_img, n_txt = sims.shape
    out = []
    for j in range(n_txt):
        i, p = j // c, sims[j // c, j]
        r_i = 1 + sum(sims[k, j] >= p for k in range(n_img) if k != i)
        r_t = 1 + sum(sims[i, k] >= p for k in range(n_txt) if k // c != i)
        out.append(max(c * r_i - (c - 1), r_t))
    return np.array(out)


def test_cross_retrieval_ranks_match_a_naive_loop_with_ties():
    rng = np.random.default_rng(0)
    for c in (1, 2, 5):
        for n_img in (1, 2, 7):
            for levels in (2, 5, 1000):  # few levels: many ties
                sims = rng.integers(0, levels, size=(n_img, c * n_img)).astype(np.float32)
                expected = _naive(sims, c)
                for block_size in (None, 1, 3):
                    got = cross_retrieval_ranks(sims, c, block_size=block_size)
                    assert got.shape == (c * n_img,) and got.dtype == np.int64
                    assert (got == expected).all(), (c, n_img, levels, block_size)
    # r_i is the project's text->image rank, 1-based: the cross rank is at least c * r_i - (c - 1)
    sims = rng.integers(0, 6, size=(30, 150)).astype(np.float64)
    r_i = t2i_ranks(torch.from_numpy(sims), captions_per_image=5).numpy() + 1
    got = cross_retrieval_ranks(sims, 5)
    assert (got == _naive(sims, 5)).all() and (got >= 5 * r_i - 4).all()


def test_cross_retrieval_ranks_by_hand_and_bad_input():
    # the positives beat everything: all rank 1; a constant matrix: every tie against, the worst rank
    assert (cross_retrieval_ranks(np.kron(np.eye(3), np.ones((1, 2))), 2) == 1).all()
    assert (cross_retrieval_ranks(np.zeros((50, 250)), 5) == 5 * 50 - 4).all()
    # image 0's caption 1 loses to image 1 (r_i = 2) and to caption 2 of image 1 (r_t = 2)
    sims = np.array([[0.9, 0.5, 0.6, 0.1], [0.1, 0.7, 0.8, 0.9]])
    assert cross_retrieval_ranks(sims, 2).tolist() == [1, 3, 1, 1]
    with pytest.raises(ValueError, match="captions_per_image"):
        cross_retrieval_ranks(np.zeros((2, 5)), 2)
    with pytest.raises(ValueError, match="NaN"):
        cross_retrieval_ranks(np.full((2, 4), np.nan), 2)
    with pytest.raises(ValueError, match="floating"):
        cross_retrieval_ranks(np.zeros((2, 4), dtype=int), 2)


def test_cross_rank_counts_per_bin():
    assert [name for name, _, _ in CROSS_RANK_BINS] == ["1", "2-5", "6-10", "11-50", "51-200", ">200"]
    ranks = np.array([1, 1, 2, 5, 6, 10, 11, 50, 51, 200, 201, 10**6])
    assert cross_rank_counts(ranks).tolist() == [2, 2, 2, 2, 2, 2]
    assert cross_rank_counts(np.array([], dtype=np.int64)).tolist() == [0] * 6
    with pytest.raises(ValueError, match="1-based"):
        cross_rank_counts(np.array([0, 1]))


def test_bad_declarations_of_the_new_kinds_are_refused(tmp_path):
    path = tmp_path / "figs.yaml"
    labels = RECIPE.replace("protocols:\n", "protocols:\n  test_labels: {dataset: synthetic, images: 100}\n")
    cases = [
        (RECIPE.replace(", series: [dev_i2t_r1, dev_t2i_r1]", ""), "figure 'r1': a 'curves' figure needs series"),
        (RECIPE.replace("series: [dev_i2t_r1, dev_t2i_r1]", "series: []"), "figure 'r1': a 'curves' figure needs series"),
        (RECIPE.replace("cross_rank,", "cross_rank, series: [dev_rsum],"), "figure 'cross': series belongs to"),
        (RECIPE.replace("rows: [a, b, ens]", "rows: [a, c]"), "figures.r1.rows: 'c' is not a runnable row"),
        (RECIPE.replace("rows: [a, ens]", "rows: [zz]"), "figures.cross.rows: 'zz' is not a runnable row"),
        (labels.replace("cross_rank,", "cross_rank, protocol: test_labels,"),
         "figures.cross: a 'cross_rank' figure needs an image-text protocol"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(RecipeError, match=message) as err:
            resolve(path, profile="smoke")
        assert "\n" not in str(err.value)
    path.write_text(RECIPE)
    assert [f.kind for f in resolve(path, profile="smoke").recipe.figures] == ["curves", "cross_rank"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The recipe reproduced once (two rows and their ensemble, two seeds): (path, store)."""
    root = tmp_path_factory.mktemp("aoq-figures")
    path = root / "figs.yaml"
    path.write_text(RECIPE)
    store = ResultStore(root / "store")
    reproduce(resolve(path, profile="smoke"), store, device=torch.device("cpu"))
    return path, store


def test_curves_figure_from_stored_results(stored, tmp_path):
    path, store = stored
    rep = collect(str(path), store)
    fig = rep.recipe.figures[0]
    data = curves_data(rep, fig)
    assert list(data) == ["dev_i2t_r1", "dev_t2i_r1"]
    for lines in data.values():  # the ensemble stores no curves: left out
        assert [cell.id for cell, _, _ in lines] == ["a", "b"]
        for _, epochs, values in lines:
            assert epochs.tolist() == [1, 2] and values.shape == (2, 2)  # 2 seeds x 2 epochs
    files = paper_figures(rep, tmp_path)  # no scorer: the cross_rank figure is skipped
    assert [f.name for f in files] == ["aoq-figures-test-r1.png"]
    assert files[0].read_bytes()[:8] == PNG and files[0].stat().st_size > 5000
    # results written before the curve was stored lack it: those cells are left out
    for cell in rep.cells:
        if cell.id == "b":
            for doc in cell.docs:
                del doc.curves["dev_i2t_r1"]
    assert [[c.id for c, _, _ in lines] for lines in curves_data(rep, fig).values()] == [["a"], ["a", "b"]]
    for cell in rep.cells:
        for doc in cell.docs:
            doc.curves.pop("dev_i2t_r1", None)
            doc.curves.pop("dev_t2i_r1", None)
    assert curves_data(rep, fig) == {}
    assert paper_figures(rep, tmp_path / "none") == []


def test_cross_rank_figure_with_a_fixed_scorer(stored, tmp_path):
    path, store = stored
    rep = collect(str(path), store)
    fig = rep.recipe.figures[1]
    calls = []

    def score(resolved, cell, seed, split):
        calls.append((cell.id, seed, split))
        if cell.id == "a":
            return np.kron(np.eye(3), np.ones((1, 2)))  # every positive wins: 6 pairs of rank 1
        return np.zeros((50, 250))  # every tie against: rank 246 for all 250 pairs

    data = cross_rank_data(rep, fig, score)
    assert calls == [("a", 0, "test"), ("ens", 0, "test")]
    assert [(cell.id, counts.tolist(), c) for cell, counts, c in data] == [
        ("a", [6, 0, 0, 0, 0, 0], 2), ("ens", [0, 0, 0, 0, 0, 250], 5)]
    files = paper_figures(rep, tmp_path, score=score)
    assert [f.name for f in files] == ["aoq-figures-test-r1.png", "aoq-figures-test-cross.png"]
    assert files[1].read_bytes()[:8] == PNG and files[1].stat().st_size > 5000
    assert paper_figures(rep, tmp_path / "none", score=lambda *args: None) == [tmp_path / "none" / "aoq-figures-test-r1.png"]


def test_stored_scorer_scores_runs_and_averages_ensembles(stored, tmp_path, capsys):
    path, store = stored
    rep = collect(str(path), store)
    score = stored_scorer(store, DataCache())
    a, b, ens = (rep.resolved.cell(cid) for cid in ("a", "b", "ens"))
    sims_a, sims_b, sims_ens = (score(rep.resolved, cell, 0, "test") for cell in (a, b, ens))
    n_img = sims_a.shape[0]
    assert sims_a.shape == (n_img, 5 * n_img) and sims_a.dtype == np.float32
    assert np.allclose(sims_ens, (sims_a + sims_b) / 2, atol=1e-6)
    # the ensemble's matrix is the one its stored metrics were computed from
    doc = next(d for c in rep.cells if c.id == "ens" for d in c.docs if d.seed == 0)
    got = retrieval_metrics(torch.from_numpy(sims_ens), captions_per_image=5)
    assert all(got[k] == pytest.approx(doc.metrics["test"][k], abs=1e-6) for k in ("i2t_r1", "t2i_r1", "rsum"))
    # the command line draws both kinds from the store
    code, _, err = cli(["report", str(path), "--plots", str(tmp_path / "cli"), "--results", str(store.root)], capsys)
    assert code == 0, err
    assert {"aoq-figures-test-r1.png", "aoq-figures-test-cross.png"} <= {p.name for p in (tmp_path / "cli").iterdir()}
    # a run without a stored model (its own, or a member's) scores nothing
    store.model_path(rep.recipe.id, b.id, b.hash, 0).unlink()
    assert score(rep.resolved, b, 0, "test") is None and score(rep.resolved, ens, 0, "test") is None
    assert score(rep.resolved, a, 0, "test") is not None


def test_curves_of_runs_stopped_early_are_padded_to_the_longest():
    from xmrbench.report.plots import _padded

    epochs, values = _padded([[1, 2], [1, 2, 3, 4], [1, 2, 3]], [[5.0, 6.0], [1.0, 2.0, 3.0, 4.0], [7.0, 8.0, 9.0]])
    assert epochs.tolist() == [1, 2, 3, 4]
    assert values.shape == (3, 4)
    assert np.isnan(values[0, 2:]).all() and np.isnan(values[2, 3])
    assert values[1].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert np.nanmean(values, axis=0).tolist() == [13 / 3, 16 / 3, 6.0, 4.0]
