"""The ``precision_scope`` figure kind (ACMR Figure 3): its declaration, and the figure
drawn from a small fake report, its plotted values checked against the stored metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from xmrbench.errors import RecipeError
from xmrbench.recipe.resolve import resolve
from xmrbench.report import plots
from xmrbench.report.collect import collect_resolved
from xmrbench.store.store import ResultStore

from support import tiny_recipe

PNG = b"\x89PNG\r\n\x1a\n"
ROWS = """
  - {id: a, label: Model A}
  - {id: b, label: Model B, set: {model.linear: true}}
  - {id: c, label: Model C, run: false, pending: not implemented}
"""
FIGURE = "figures:\n  - {id: fig3, kind: precision_scope, title: Precision-scope curves, rows: [a, b]}\n"
DATASET = "synthetic_labelled (0123456789)"


def _recipe(extra: str = FIGURE, protocols: str = "test_labels: {dataset: synthetic, images: 100}") -> str:
    text = tiny_recipe("precision-scope-test", ROWS, extra=extra, seeds="[0, 1]")
    return (text.replace("test: {dataset: synthetic, images: 100}", protocols)
            .replace("columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10]", "columns: [i2t_map, t2i_map, avg_map]"))


def _doc(seed: int, i2t_scopes: range, t2i_scopes: range, rng) -> SimpleNamespace:
    metrics = {"i2t_map": float(rng.random()), "t2i_map": float(rng.random())}
    metrics |= {f"i2t_p{k}": float(rng.random()) for k in i2t_scopes}
    metrics |= {f"t2i_p{k}": float(rng.random()) for k in t2i_scopes}
    return SimpleNamespace(seed=seed, metrics={"test_labels": metrics, "dev": {"avg_map": 0.5}}, curves={}, config={})


@pytest.fixture
def report(tmp_path):
    """Cell a: two seeds, the second without i2t_p300 (only their common scopes are drawn);
    cell b: one seed with image-query precision only; c: not runnable."""
    path = tmp_path / "ps.yaml"
    path.write_text(_recipe())
    rep = collect_resolved(resolve(path, profile="smoke"), ResultStore(tmp_path / "store"))
    rng = np.random.default_rng(0)
    docs = {"a": [_doc(0, range(50, 301, 50), range(50, 101, 50), rng),
                  _doc(1, range(50, 251, 50), range(50, 101, 50), rng)],
            "b": [_doc(0, range(50, 1001, 50), range(0), rng)]}
    for cell in rep.cells:
        cell.docs = docs.get(cell.id, [])
    rep.datasets, rep.seeds = [DATASET], [0, 1]
    return rep, docs


def test_precision_scope_figure_plots_the_stored_means(report, tmp_path, monkeypatch):
    rep, docs = report
    drawn = {}
    real_save = plots._save

    def spy(figure, path):
        drawn["suptitle"] = figure._suptitle.get_text()
        drawn["panels"] = {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                                            for line in ax.get_lines()} for ax in figure.axes}
        return real_save(figure, path)

    monkeypatch.setattr(plots, "_save", spy)
    files = plots.paper_figures(rep, tmp_path / "figs")
    assert [f.name for f in files] == ["precision-scope-test-fig3.png"]
    assert files[0].read_bytes()[:8] == PNG and files[0].stat().st_size > 5000
    assert DATASET in drawn["suptitle"] and "Precision-scope curves" in drawn["suptitle"]

    def mean(cell: str, key: str) -> float:
        return sum(d.metrics["test_labels"][key] for d in docs[cell]) / len(docs[cell])

    assert set(drawn["panels"]) == {"Img2Txt", "Txt2Img"}
    img2txt, txt2img = drawn["panels"]["Img2Txt"], drawn["panels"]["Txt2Img"]
    assert set(img2txt) == {"Model A", "Model B"} and set(txt2img) == {"Model A"}
    xs, ys = img2txt["Model A"]
    assert xs == [50, 100, 150, 200, 250]  # p300: only seed 0 has it
    assert ys == pytest.approx([mean("a", f"i2t_p{k}") for k in xs], abs=1e-12)
    xs, ys = img2txt["Model B"]
    assert xs == list(range(50, 1001, 50))
    assert ys == pytest.approx([docs["b"][0].metrics["test_labels"][f"i2t_p{k}"] for k in xs], abs=1e-12)
    xs, ys = txt2img["Model A"]
    assert xs == [50, 100] and ys == pytest.approx([mean("a", "t2i_p50"), mean("a", "t2i_p100")], abs=1e-12)


def test_precision_scope_data_and_nothing_to_draw(report, tmp_path):
    rep, _ = report
    fig = rep.recipe.figures[0]
    data = plots.precision_scope_data(rep, fig)
    assert {d: [cell.id for cell, _, _ in lines] for d, lines in data.items()} == {"i2t": ["a", "b"], "t2i": ["a"]}
    for cell in rep.cells:  # results without precision keys (written before they were recorded)
        cell.docs = [SimpleNamespace(seed=0, metrics={"test_labels": {"i2t_map": 0.3}})] if cell.runnable else []
    assert plots.precision_scope_data(rep, fig) == {}
    assert plots.paper_figures(rep, tmp_path / "none") == []


def test_precision_scope_needs_a_label_protocol(tmp_path):
    path = tmp_path / "ps.yaml"
    both = "test: {dataset: synthetic, images: 100}\n  test_labels_map50: {dataset: synthetic, images: 100}"
    path.write_text(_recipe(FIGURE.replace("rows:", "protocol: test_labels_map50, rows:"), both))
    assert resolve(path, profile="smoke").recipe.figures[0].kind == "precision_scope"
    for text in (_recipe(FIGURE, both), _recipe(FIGURE.replace("rows:", "protocol: test, rows:"), both)):
        path.write_text(text)
        with pytest.raises(RecipeError, match="a 'precision_scope' figure needs a label protocol") as err:
            resolve(path, profile="smoke")
        assert "\n" not in str(err.value) and "'test'" in str(err.value)
    path.write_text(_recipe(FIGURE.replace("precision_scope", "precision_scopes")))
    with pytest.raises(RecipeError, match="precision_scope"):
        resolve(path, profile="smoke")
