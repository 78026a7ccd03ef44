"""ACMR's recipes end to end on the tiny synthetic labelled sets: the label-retrieval path
(data kind ``synthetic_labelled``, dev selection by mean mAP, the ``test_labels``
protocol), the figures the paper draws (losses per epoch, t-SNE, precision-scope) and
``xmrbench sweep acmr`` with Figure 6's parameters, one at a time.

These runs check the plumbing, not the learning (the regression gate's learning layer
judges ACMR's smoke runs against their reference seeds), so they train for one or two
short epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmrbench.errors import UsageError
from xmrbench.runner.sweep import build_sweep

from support import cli

SHORT = ["--set", "train.epochs=2", "--set", "train.min_epoch_pairs=256"]


def _docs(store: Path, recipe: str) -> dict[str, dict]:
    return {p.name.split("--")[0]: json.loads(p.read_text()) for p in (store / recipe).glob("*.json")}


@pytest.mark.slow
def test_figure5_records_both_losses_per_epoch_and_draws_them(tmp_path, capsys):
    code, out, err = cli(["reproduce", "acmr-figure5", "--profile", "smoke", "--seeds", "0", *SHORT,
                          "--results", str(tmp_path), "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    docs = _docs(tmp_path, "acmr-figure5")
    assert set(docs) == {"full-acmr", "no-adversary"}
    for doc in docs.values():
        curves = doc["curves"]
        assert curves["epoch"] == [1, 2]
        # one mean per epoch of each loss; the adversarial loss of two modalities at chance is 2 ln 2
        assert len(curves["emb_loss"]) == len(curves["adv_loss"]) == 2
        assert all(0.5 < v < 20 for v in curves["adv_loss"])
        # selected by the dev split's mean mAP; no recall on a label task
        assert curves["dev_score"] == curves["dev_avg_map"] and "dev_rsum" not in curves
        metrics = doc["metrics"]["test_labels"]
        assert 0 <= metrics["avg_map_chance"] < metrics["avg_map"] <= 1
        assert doc["dataset"]["name"] == "synthetic-wikipedia"
    figs = tmp_path / "figs"
    code, out, err = cli(["report", "acmr-figure5", "--profile", "smoke", "--results", str(tmp_path),
                          "--plots", str(figs)], capsys)
    assert code == 0, err
    assert (figs / "acmr-figure5-figure5.png").is_file(), sorted(p.name for p in figs.iterdir())
    assert (figs / "acmr-figure5-curves.png").is_file()  # the dev mean mAP per epoch, every cell


@pytest.mark.slow
def test_sweep_acmr_varies_alpha_and_k_one_at_a_time(tmp_path, capsys):
    figs = tmp_path / "figs"
    code, out, err = cli(["sweep", "acmr", "--alpha", "0.1,1", "--k", "2", "--profile", "smoke", "--seeds", "0",
                          *SHORT, "--results", str(tmp_path), "--quiet", "--threads", "1", "--plots", str(figs)],
                         capsys)
    assert code == 0, err
    stored = _docs(tmp_path, "acmr-figure6.sweep-alpha_k")
    assert set(stored) == {"full-acmr.alpha-0.1", "full-acmr.alpha-1", "full-acmr.k-2"}
    # each value lands in its config key, the other parameters keep the row's own values
    methods = {cell: doc["config"]["method"] for cell, doc in stored.items()}
    assert (methods["full-acmr.alpha-0.1"]["alpha"], methods["full-acmr.alpha-0.1"]["k"]) == (0.1, 5)
    assert (methods["full-acmr.alpha-1"]["alpha"], methods["full-acmr.alpha-1"]["beta"]) == (1.0, 1.0)
    assert (methods["full-acmr.k-2"]["k"], methods["full-acmr.k-2"]["alpha"]) == (2, 1.0)
    assert "avg_map (test_labels, ours)" in out.replace("\n", " ").replace("│", " ") or "avg_map" in out
    (png,) = figs.glob("*.png")
    assert png.stat().st_size > 0


def test_unknown_acmr_sweep_parameter_lists_the_sweepable_ones():
    with pytest.raises(UsageError, match=r"no sweep parameter --gamma; acmr sweeps --alpha, --beta, --k"):
        build_sweep("acmr", ["--gamma", "1,2"], profile="smoke", seeds=None, overrides={}, rows=None)


def test_acmr_sweep_is_figure6s_row_one_parameter_at_a_time():
    resolved = build_sweep("acmr", ["--alpha", "0,0.01", "--beta", "10", "--k", "1,6"], profile="quick", seeds=[0],
                           overrides={}, rows=None)
    points = resolved.recipe.sweep_points
    assert points == {"full-acmr.alpha-0": {"method.alpha": 0}, "full-acmr.alpha-0.01": {"method.alpha": 0.01},
                      "full-acmr.beta-10": {"method.beta": 10}, "full-acmr.k-1": {"method.k": 1},
                      "full-acmr.k-6": {"method.k": 6}}
    assert [c.id for c in resolved.cells] == list(points)


@pytest.mark.slow
def test_figure4_maps_the_stored_models_test_embeddings(tmp_path, capsys):
    """Figure 4's t-SNE panels from the stored models (the smoke budget as the recipe sets it,
    so that the report finds the runs it resolves)."""
    code, out, err = cli(["reproduce", "acmr-figure4", "--profile", "smoke", "--seeds", "0", "--rows",
                          "imi-no-adversary,full-acmr", "--results", str(tmp_path), "--quiet", "--threads", "1",
                          "--no-report"], capsys)
    assert code == 0, err
    figs = tmp_path / "figs"
    code, out, err = cli(["report", "acmr-figure4", "--profile", "smoke", "--results", str(tmp_path),
                          "--plots", str(figs)], capsys)
    assert code == 0, err
    assert (figs / "acmr-figure4-tsne.png").stat().st_size > 0  # two of the three panels have a stored model
