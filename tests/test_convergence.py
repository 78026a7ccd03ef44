"""Convergence as data: the plateau criterion, early stopping, the record every result
carries, and claim verdicts that refuse a pair whose side has not converged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmrbench.config import PLATEAU_DEFAULTS, TrainConfig
from xmrbench.core.convergence import CLOSED_FORM, Convergence, of_curve, of_members, of_record, plateau_gain
from xmrbench.recipe.config import validate_cell_config
from xmrbench.stats.claims import Side, judge

from support import cli, tiny_recipe

# ----------------------------------------------------------------------------- the criterion, by hand


def test_plateau_gain_by_hand():
    # best before the window 60, best inside it 60.3: +0.5 %
    assert plateau_gain([10, 50, 60, 60.2, 60.3, 60.1], 3) == pytest.approx(0.3 / 60)
    assert plateau_gain([10, 20, 30, 40, 50], 3) == pytest.approx(30 / 20)  # 20 -> 50
    assert plateau_gain([10, 50, 40, 30, 20], 3) == pytest.approx(-10 / 50)  # past its peak: negative
    assert plateau_gain([10, 20, 30], 3) is None  # nothing before the window


def test_of_curve_verdicts_and_reasons():
    flat = of_curve([10, 50, 60, 60.2, 60.3, 60.1], window=3, threshold=0.01, max_epochs=10)
    assert flat.converged and flat.stopped_early and flat.epochs == 6 and "plateau" in flat.reason
    rising = of_curve([10, 20, 30, 40, 50], window=3, threshold=0.01, max_epochs=5)
    assert not rising.converged and not rising.stopped_early and "still improving" in rising.reason
    short = of_curve([10, 20], window=3, threshold=0.01)
    assert not short.converged and "needs more than 3" in short.reason
    # the threshold is strict: a gain of exactly 1 % has not plateaued at 1 %
    assert not of_curve([100, 100, 100, 101], window=1, threshold=0.01).converged
    assert of_curve([100, 100, 100, 100.99], window=1, threshold=0.01).converged


def test_records_round_trip_and_ensembles_need_every_member():
    c = of_curve([1, 2, 3, 3, 3, 3], window=3, threshold=0.01)
    assert Convergence.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert of_members({"a": c, "b": c}).converged
    behind = of_members({"a": c, "b": of_curve([1, 2], window=3, threshold=0.01), "c": None})
    assert not behind.converged and "b" in behind.reason and "no record: c" in behind.reason


def test_a_stored_run_without_a_record_is_judged_from_its_curves():
    assert of_record(None, {"fit_s": [0.1]}, {}, PLATEAU_DEFAULTS).criterion == CLOSED_FORM
    derived = of_record(None, {"dev_score": [1, 2, 3, 4, 5]}, {"epochs": 5}, PLATEAU_DEFAULTS)
    assert derived is not None and not derived.converged and derived.window == PLATEAU_DEFAULTS[0]
    assert of_record(None, {}, {}, PLATEAU_DEFAULTS) is None  # an old ensemble: nothing to judge by


def test_the_new_train_keys_enter_the_hash_only_when_set():
    base = {"model": {"name": "two_branch_embedding"}, "loss": {"name": "bidirectional_ranking"}}
    plain = validate_cell_config(base, where="t")
    assert not {"plateau_window", "plateau_gain", "early_stop", "min_epoch_pairs"} & set(plain.to_dict()["train"])
    at_default = validate_cell_config({**base, "train": {"plateau_window": PLATEAU_DEFAULTS[0]}}, where="t")
    assert at_default.hash() == plain.hash()
    for key, value in (("early_stop", True), ("plateau_window", 5), ("plateau_gain", 0.02), ("min_epoch_pairs", 500)):
        assert validate_cell_config({**base, "train": {key: value}}, where="t").hash() != plain.hash(), key
    assert TrainConfig().plateau_window == PLATEAU_DEFAULTS[0]


def test_an_epoch_of_a_small_training_set_repeats_it_to_its_minimum_size():
    from xmrbench.engine.samplers import random_batches
    from xmrbench.engine.train import epoch_batches

    caption_image = np.repeat(np.arange(20), 5)  # 100 pairs
    once = epoch_batches(random_batches, caption_image, 32, np.random.default_rng(0))
    assert sorted(np.concatenate(once).tolist()) == list(range(100))
    batches = epoch_batches(random_batches, caption_image, 32, np.random.default_rng(0), 250)
    drawn = np.concatenate(batches)
    assert len(drawn) == 300 and np.bincount(drawn).tolist() == [3] * 100  # three whole passes
    assert [b.tolist() for b in batches[:len(once)]] == [b.tolist() for b in once]  # the first pass is the usual one
    assert not np.array_equal(drawn[:100], drawn[100:200])  # each pass in a new order
    again = epoch_batches(random_batches, caption_image, 32, np.random.default_rng(0), 250)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # drawn from the epoch's generator alone
    assert len(epoch_batches(random_batches, caption_image, 32, np.random.default_rng(0), 100)) == len(once)


# ----------------------------------------------------------------------------- verdicts


def test_a_pair_with_an_unconverged_side_is_untested():
    sides = {("a", "rsum", "test"): Side({0: 10.0, 1: 11.0, 2: 12.0}), ("b", "rsum", "test"): Side({0: 1.0, 1: 2.0, 2: 2.5})}
    claims = [("c", "a beats b", "rsum", "test", [("a", "b")])]
    judged = judge(claims, sides)[0]
    assert judged.verdict == "holds"
    refused = judge(claims, sides, unconverged={"b": "still improving"})[0]
    assert refused.verdict == "untested" and refused.label == "untested (not converged)"
    assert "not converged: 'b' (still improving)" in refused.pairs[0].reason


# ----------------------------------------------------------------------------- end to end

ROWS = """\
  - {id: short, label: two epochs}
  - {id: long, label: until its plateau, set: {train.epochs: 30, train.early_stop: true, train.plateau_gain: 0.02, train.lr: 0.01}}
"""
CLAIM = """claims:
  - {id: long-wins, text: "the converged model beats the short one", pairs: [[long, short]]}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two rows, seeds 0-1: one stopped after 2 epochs (cannot have converged with a window
    of 3), one trained with early stopping on a budget of 40 epochs."""
    root = tmp_path_factory.mktemp("conv")
    path = root / "conv.yaml"
    path.write_text(tiny_recipe("t-conv", ROWS, epochs=2, batch_size=100, seeds="[0, 1]", extra=CLAIM))
    return root, path


def _run(store, capsys, *extra):
    root, path = store
    return cli(["reproduce", str(path), "--profile", "smoke", "--results", str(root / "results"), "--quiet",
                "--no-report", *extra], capsys)


def test_short_budgets_are_recorded_as_not_converged_and_their_claims_untested(store, capsys):
    code, _, err = _run(store, capsys)
    assert code == 0, err
    root, path = store
    docs = {(d["cell"]["id"], d["seed"]): d for d in (json.loads(p.read_text()) for p in (root / "results" / "t-conv").glob("*--seed*.json"))}
    assert len(docs) == 4
    for seed in (0, 1):
        short, long = docs[("short", seed)]["convergence"], docs[("long", seed)]["convergence"]
        assert not short["converged"] and short["epochs"] == 2
        assert long["converged"] and long["stopped_early"] and long["epochs"] < 40, long
        assert len(docs[("long", seed)]["curves"]["dev_score"]) == long["epochs"]

    code, out, _ = cli(["report", "t-conv", "--markdown", "--results", str(root / "results"), "--profile", "smoke"], capsys)
    assert code == 0
    assert "untested (not converged)" in out and "not converged: 'short'" in out
    assert "ours (n=2) ‡" in out and "--allow-unconverged" not in out.split("### claims")[1]

    code, out, _ = cli(["report", "t-conv", "--markdown", "--results", str(root / "results"), "--profile", "smoke",
                        "--allow-unconverged"], capsys)
    assert code == 0
    claims = out.split("### claims")[1]
    assert "untested" not in claims.split("Verdicts:")[0] and "--allow-unconverged: these verdicts include" in claims


def test_plan_shows_convergence_of_done_runs(store, capsys):
    root, path = store
    _run(store, capsys)  # done already when run after the test above; computes otherwise
    code, out, _ = cli(["plan", str(path), "--profile", "smoke", "--results", str(root / "results")], capsys)
    assert code == 0 and "converged" in out and "yes (plateau" in out and "no (2 epoch(s)" in out


def test_calibrate_finds_each_rows_plateau(store, capsys, tmp_path):
    """``xmrbench calibrate``: one seed per row, early stopping within the budget, a table."""
    _, path = store
    out_md = tmp_path / "calibration.md"
    code, out, err = cli(["calibrate", str(path), "--profile", "smoke", "--max-epochs", "30", "--rows", "long", "--results",
                          str(tmp_path / "cal"), "--out", str(out_md), "--quiet", "--budget-s", "0.01"], capsys)
    assert code == 0, err
    table = out_md.read_text()
    lines = [line for line in table.splitlines() if line.startswith("| t-conv |")]
    assert len(lines) == 1, table
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        epochs, suggested, chance = int(cells[3]), int(cells[8]), float(cells[7])
        assert 3 < epochs < 30 and suggested == max(4, -(-epochs * 3 // 2))  # the plateau epoch x 1.5, rounded up
        assert float(cells[6]) > 2 * chance  # the plateau is far above chance (31.6 on 100 test images)
        assert "over the 0 s budget" in cells[9]


def test_a_closed_form_row_is_tabulated_as_such():
    from xmrbench.gate.calibrate import CalibrationRow, to_markdown

    row = CalibrationRow("r", "cca", "cca", True, None, 1.0, 300.0, 296.0, 3.2, "fitted in closed form",
                         criterion="closed form")
    cells = [c.strip() for c in to_markdown([row], budget_s=120, max_epochs=40).splitlines()[2].strip("|").split("|")]
    assert cells[3] == "closed form" and cells[8] == "-" and cells[9] == "converged by construction"


def test_a_version_1_result_reads_and_is_judged_from_its_curves(store, capsys, tmp_path):
    from xmrbench.store.store import ResultStore

    root, _ = store
    _run(store, capsys)
    doc = json.loads(next((root / "results" / "t-conv").glob("short--*--seed0.json")).read_text())
    old = {k: v for k, v in doc.items() if k != "convergence"} | {"schema_version": 1}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    read = ResultStore(tmp_path).read(path)
    assert read.schema_version == 2 and read.convergence is None
    derived = of_record(read.convergence, read.curves, read.config["train"], PLATEAU_DEFAULTS)
    assert derived == Convergence.from_dict(doc["convergence"])  # the same record the run wrote


def test_the_quick_profiles_match_the_calibration_table():
    """Every row of docs/calibration.md's measured table trains, in its recipe's quick
    profile, with early stopping and at least the suggested epoch budget."""
    from pathlib import Path

    from xmrbench.recipe.resolve import resolve

    doc = (Path(__file__).resolve().parents[1] / "docs" / "calibration.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in doc.splitlines()
            if line.startswith("| ") and line.count("|") == 11 and not line.startswith("| recipe")]
    assert rows, "no measured rows in docs/calibration.md"
    resolved = {}  # each recipe resolved once
    for recipe, row, _model, epochs, *_rest, suggested, _note in rows:
        if epochs == "closed form":  # nothing to budget (CCA)
            assert suggested == "-", (recipe, row)
            continue
        if recipe not in resolved:
            resolved[recipe] = resolve(recipe, profile="quick", require_data=False)
        cell = next(c for c in resolved[recipe].cells if c.id == row)
        assert cell.config.train.early_stop, (recipe, row)
        assert cell.config.train.epochs >= int(suggested) > int(epochs), (recipe, row)


def test_calibrate_tabulates_a_label_recipe_by_its_mean_map(capsys, tmp_path):
    """A label-retrieval recipe (ACMR's) is tabulated by its mean mAP and the chance level
    its run recorded, not by rsum (it has none)."""
    out_md = tmp_path / "calibration.md"
    code, out, err = cli(["calibrate", "acmr-table3-pascal", "--profile", "smoke", "--rows", "cca", "--max-epochs", "3",
                          "--results", str(tmp_path / "cal"), "--out", str(out_md), "--quiet"], capsys)
    assert code == 0, err
    lines = out_md.read_text().splitlines()
    assert "| dev avg_map | test avg_map | chance avg_map |" in lines[0]
    (row,) = [line for line in lines if line.startswith("| acmr-table3-pascal |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    test, chance = float(cells[6]), float(cells[7])
    assert 0 < chance < 0.5 and test > 2 * chance  # CCA on the tiny Pascal-shaped set: 0.485, chance 0.170
