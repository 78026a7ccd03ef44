"""The regression gate (``xmrbench check``): chance levels against an exhaustive count, the
tolerance rule, reference bands, the CI set, the gate end to end on a tiny recipe (record,
pass, replay, a regression, a refused reference, a stale one), the committed references,
and mutants that the learning layer must catch."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as st

from xmrbench.gate import chance as C
from xmrbench.gate.check import PROFILE, gate_cells
from xmrbench.gate.learning import (
    ALPHA,
    BAR,
    FLOOR_QUERIES,
    GATE_SEEDS,
    NEAR,
    REFERENCE_SEEDS,
    LearningCheck,
    band_problem,
    tolerance,
)
from xmrbench.gate.references import read_reference
from xmrbench.recipe.resolve import resolve

from support import cli, tiny_recipe

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference"

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------
# chance levels


def _exhaustive_chance_rsum(n_images: int, cpi: int) -> float:
    """Expected rsum over every ordering of the gallery (the definition, counted)."""
    n_txt = n_images * cpi
    mine = set(range(cpi))  # the captions of image 0; every image is alike by symmetry
    i2t = {k: 0 for k in (1, 5, 10)}
    orders = list(itertools.permutations(range(n_txt)))
    for order in orders:
        best = min(order.index(c) for c in mine)
        for k in i2t:
            i2t[k] += best < k
    t2i = {k: sum(pos < k for pos in range(n_images)) / n_images for k in (1, 5, 10)}
    return 100 * sum(i2t[k] / len(orders) + t2i[k] for k in (1, 5, 10))


@pytest.mark.parametrize(("n_images", "cpi"), [(2, 3), (3, 2), (7, 1)])
def test_chance_rsum_equals_an_exhaustive_count(n_images, cpi):
    assert C.chance_rsum(n_images, cpi) == pytest.approx(_exhaustive_chance_rsum(n_images, cpi), abs=1e-9)


def test_chance_rsum_is_what_random_similarities_score():
    from xmrbench.engine.evaluate import metrics_from_similarities

    gen = torch.Generator().manual_seed(0)
    n, draws = 20, 400
    values = [metrics_from_similarities([torch.rand(n, 5 * n, generator=gen)], captions_per_image=5)[0]["rsum"]
              for _ in range(draws)]
    se = np.std(values, ddof=1) / math.sqrt(draws)
    assert abs(np.mean(values) - C.chance_rsum(n)) < 4 * se
    assert C.chance_rsum(100) == pytest.approx(31.6, abs=0.05) and C.chance_rsum(500) == pytest.approx(6.4, abs=0.05)


def test_chance_of_folds_is_one_folds_and_unknown_metrics_are_refused():
    assert C.chance_level("rsum", images=500, captions_per_image=5, folds=5) == C.chance_rsum(100)
    with pytest.raises(ValueError):
        C.chance_level("rsum", images=501, captions_per_image=5, folds=5)
    with pytest.raises(Exception, match="no chance level"):
        C.headline_metric({"i2t_map": 0.5})


# ---------------------------------------------------------------------------------
# the tolerance rule and the band


def test_tolerance_is_the_t_quantile_of_the_reference_spread():
    values = [100.0, 110.0, 95.0, 105.0, 98.0, 102.0, 107.0, 99.0]
    sd = np.std(values, ddof=1)
    want = st.t.ppf(1 - ALPHA / 2, len(values) - 1) * sd * math.sqrt(1 / 3 + 1 / len(values))
    assert tolerance(values, n_gate=3, floor=1.0) == pytest.approx(want)
    assert tolerance([50.0] * 8, n_gate=3, floor=7.2) == 7.2  # deterministic: the floor
    with pytest.raises(ValueError):
        tolerance([1.0], n_gate=3, floor=0.0)


def test_the_tolerance_has_its_false_alarm_rate():
    # draws from one normal distribution: reference of 8 seeds, gate of 3, repeated
    rng = np.random.default_rng(0)
    trials = 200_000
    ref = rng.normal(size=(trials, 8))
    now = rng.normal(size=(trials, 3))
    t = st.t.ppf(1 - 0.01 / 2, 7)  # at alpha = 0.01 the rate is measurable here
    tol = t * ref.std(axis=1, ddof=1) * math.sqrt(1 / 3 + 1 / 8)
    rate = np.mean(np.abs(now.mean(axis=1) - ref.mean(axis=1)) > tol)
    assert rate == pytest.approx(0.01, abs=0.002)


def test_band_rules():
    assert band_problem(expect="learns", mean=100.0, tol=20.0, bar=63.2, chance=31.6) is None
    assert "not above the learning bar" in band_problem(expect="learns", mean=80.0, tol=20.0, bar=63.2, chance=31.6)
    # near chance: the mean alone, at most 1.5 x chance (a model at chance spreads too widely for a band)
    assert band_problem(expect="near_chance", mean=40.0, tol=40.0, bar=63.2, chance=31.6) is None
    assert "it learns here" in band_problem(expect="near_chance", mean=50.0, tol=1.0, bar=63.2, chance=31.6)


def test_a_model_at_chance_passes_the_near_chance_rule_and_fails_the_learning_rule():
    from xmrbench.engine.evaluate import metrics_from_similarities

    gen = torch.Generator().manual_seed(1)
    draws = [metrics_from_similarities([torch.rand(100, 500, generator=gen)], captions_per_image=5)[0]["rsum"]
             for _ in range(len(REFERENCE_SEEDS) + len(GATE_SEEDS))]
    ref, now = draws[: len(REFERENCE_SEEDS)], draws[len(REFERENCE_SEEDS):]
    chance = C.chance_rsum(100)
    tol = tolerance(ref, n_gate=len(GATE_SEEDS), floor=FLOOR_QUERIES * C.rsum_resolution(100))
    assert np.mean(ref) <= NEAR * chance
    assert band_problem(expect="near_chance", mean=float(np.mean(ref)), tol=tol, bar=BAR * chance, chance=chance) is None
    assert band_problem(expect="learns", mean=float(np.mean(ref)), tol=tol, bar=BAR * chance, chance=chance)
    check = LearningCheck("r", "c", "test", "rsum", "near_chance", chance, BAR * chance, float(np.mean(ref)), tol,
                          tuple(now))
    assert check.passed


def _check(expect: str, current: tuple[float, ...], ref: float = 100.0, tol: float = 10.0) -> LearningCheck:
    return LearningCheck("r", "c", "test", "rsum", expect, 31.6, 63.2, ref, tol, current)


def test_a_learning_check_needs_the_band_and_the_bar():
    assert _check("learns", (95.0, 100.0, 105.0)).passed
    failed = _check("learns", (80.0, 85.0, 86.0))
    assert not failed.within and failed.on_the_right_side and "from the reference" in failed.why()
    untrained = _check("learns", (30.0, 31.0, 33.0))
    assert not untrained.passed and "below the learning bar" in untrained.why()
    assert _check("near_chance", (30.0, 31.0, 33.0), ref=32.0).passed
    assert _check("near_chance", (50.0, 51.0, 53.0), ref=32.0).passed  # judged by the bar alone
    learned = _check("near_chance", (70.0, 71.0, 72.0), ref=32.0)
    assert not learned.on_the_right_side and not learned.passed and "above the learning bar" in learned.why()


# ---------------------------------------------------------------------------------
# the CI set


GRID = """id: tiny-grid
paper: two_branch
table: T
title: grid
columns: [rsum]
protocols:
  test: {dataset: synthetic, images: 100}
config:
  model: {name: vsepp, embed_dim: 8, word_dim: 8}
  loss: {name: hardest_negative}
profiles:
  smoke: {seeds: [0], config: {data: {size: tiny}}}
grid:
  train.lr: [0.001, 0.002, 0.003]
rows:
  - {id: a, label: A}
  - {id: b, label: B, set: {loss.margin: 0.1}}
"""


def test_the_ci_set_keeps_the_corners_of_a_grid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    resolved = resolve(path, profile="smoke")
    ci = [c.id for c in gate_cells(resolved, all_cells=False)]
    assert ci == ["a@lr=0.001", "a@lr=0.003", "b@lr=0.001", "b@lr=0.003"]
    assert len(gate_cells(resolved, all_cells=True)) == 6
    # a cell declared not gated is left out, and the row is represented by its first gated point
    path.write_text(GRID + 'not_gated: {"a@lr=0.001": "spreads too widely"}\n')
    resolved = resolve(path, profile="smoke")
    ci = [c.id for c in gate_cells(resolved, all_cells=False)]
    assert ci == ["a@lr=0.002", "a@lr=0.003", "b@lr=0.001", "b@lr=0.003"]
    assert "a@lr=0.001" not in [c.id for c in gate_cells(resolved, all_cells=True)]


def test_a_protocol_declared_not_gated_is_neither_recorded_nor_judged(tmp_path):
    from xmrbench.gate.check import CellRuns, compare, reference_doc

    two = GRID.replace("  test: {dataset: synthetic, images: 100}\n",
                       "  test: {dataset: synthetic, images: 100}\n  testall: {dataset: synthetic, images: 500}\n")
    path = tmp_path / "two.yaml"

    def runs_of(resolved):
        # test (100 images, bar 63.2) learns tightly; testall (500 images, bar 12.8) spreads
        # so widely that its band reaches below the bar
        wide = [33.8, 33.1, 33.4, 38.0, 28.0, 35.9, 25.7, 33.2]
        out = []
        for cell in resolved.runnable_cells():
            cr = CellRuns(cell, splits={"test": {"images": 100, "captions_per_image": 5, "folds": 1},
                                        "testall": {"images": 500, "captions_per_image": 5, "folds": 1}})
            for s, w in zip(range(8), wide):
                cr.metrics[s] = {"test": {"rsum": 200.0 + s}, "testall": {"rsum": w}}
            out.append(cr)
        return out

    path.write_text(two)
    resolved = resolve(path, profile="smoke", seeds=list(range(8)))
    _doc, refused = reference_doc(resolved, runs_of(resolved))
    assert len(refused) == 6 and all("testall rsum" in line for line in refused)

    path.write_text(two + 'not_gated: {a: {testall: "spreads"}, b: {testall: "spreads"}}\n')
    resolved = resolve(path, profile="smoke", seeds=list(range(8)))
    doc, refused = reference_doc(resolved, runs_of(resolved))
    assert refused == [] and all(set(c["checks"]) == {"test"} for c in doc["cells"])
    gate = resolve(path, profile="smoke", seeds=[0, 1, 2])
    result = compare(gate, doc, [cr for cr in runs_of(gate)], layers=["learning"])
    assert result.problems == [] and {lc.protocol for lc in result.learning} == {"test"}
    assert len(result.learning) == 6 and all(lc.passed for lc in result.learning)


# ---------------------------------------------------------------------------------
# end to end on a tiny recipe

RECIPE = tiny_recipe(
    "tiny-check",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {loss.margin: 0.1}}
""",
    title="check test",
    model="{name: vsepp, embed_dim: 32, word_dim: 16}",
    # one epoch of summed hinges: rsum 197 +- 20 and 197 +- 12 over seeds 0-7 on the
    # 100 test images (chance 31.6, bar 63), so both bands clear the bar
    loss="{name: triplet_sum}",
    batch_size=32,
    epochs=1,
    train_extra=", lr: 0.005",
)

PENDING = """id: tiny-pending
paper: two_branch
table: T
title: nothing runs
columns: [i2t_r1]
protocols:
  test: {dataset: synthetic, images: 100}
profiles:
  smoke: {seeds: [0], config: {data: {size: tiny}}}
rows:
  - {id: x, label: X, run: false, pending: "not implemented", paper: {test: [1.0]}}
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "t").mkdir(parents=True)
    (folder / "t" / "check.yaml").write_text(RECIPE)
    (folder / "t" / "pending.yaml").write_text(PENDING)
    monkeypatch.setenv("XMRBENCH_RECIPES", str(folder))
    ref = tmp_path / "reference"
    ref.mkdir()
    return folder, ref


LEARNING = ["--layers", "learning,replay", "--executor", "local"]


@pytest.mark.slow
def test_check_end_to_end(recipes, tmp_path, capsys):
    folder, ref = recipes
    store = tmp_path / "store"
    base = ["check", "--reference", str(ref), "--results", str(store), *LEARNING]
    # no reference yet: a failure that says how to record one
    code, out, err = cli(base, capsys)
    assert code == 1 and "no reference for tiny-check" in out and "check --update tiny-check" in out
    assert "tiny-pending | skipped" in out and "all run: false" in out
    assert len(err.strip().splitlines()) == 1 and "1 other problem(s) in 1 recipe(s)" in err
    # where the time went: the runs computed here, and their own summed seconds
    timing = " ".join(line for line in out.splitlines() if line.startswith("time (s):") or line.startswith("  "))
    assert "time (s): startup" in out and "the runs' own" in timing and "judge" in timing
    # record over the reference seeds, then the gate seeds replay bit for bit here
    code, out, _ = cli(["check", "--reference", str(ref), "--update", *LEARNING], capsys)
    assert code == 0 and "check updated: 1 recipe(s), 1 skipped" in out
    doc = json.loads((ref / "tiny-check.json").read_text())
    assert doc["seeds"] == list(REFERENCE_SEEDS) and [c["cell"] for c in doc["cells"]] == ["a", "b"]
    assert "ranks" not in json.dumps(doc)
    for cell in doc["cells"]:
        check = cell["checks"]["test"]
        assert check["mean"] - check["tolerance"] >= check["bar"] == pytest.approx(BAR * C.chance_rsum(100))
    code, out, _ = cli(base, capsys)
    assert code == 0 and "check passed" in out and "| 2/2 " in out and " identical" in out
    code, out, _ = cli([*base, "--json"], capsys)
    seconds = json.loads(out)["seconds"]
    assert code == 0 and {"startup", "prepare", "runs", "run_time", "judge"} <= set(seconds)
    assert seconds["run_time"] == 0 and all(v is None or v >= 0 for v in seconds.values())  # every run was stored
    # another machine: replay does not apply, the learning checks do
    other = json.loads((ref / "tiny-check.json").read_text())
    other["env"]["cpu_flags"] = "another-cpu"
    (ref / "tiny-check.json").write_text(json.dumps(other))
    code, out, _ = cli(base, capsys)
    assert code == 0 and "other environment" in out
    # a learning regression: the reference says the model was much better
    other["cells"][1]["checks"]["test"]["mean"] += 3 * other["cells"][1]["checks"]["test"]["tolerance"]
    (ref / "tiny-check.json").write_text(json.dumps(other))
    code, out, err = cli(base, capsys)
    assert code == 1 and "1 learning check(s) failed" in err and len(err.strip().splitlines()) == 1
    row = next(line for line in out.splitlines() if line.startswith("learning failed: tiny-check/b "))
    assert "test.rsum" in row and "beyond the tolerance" in row
    # the same environment: one metric of one seed that differs in the last place is caught
    (ref / "tiny-check.json").write_text(json.dumps(doc))
    doc["cells"][0]["runs"]["1"]["test"]["t2i_meanr"] += 1e-9
    (ref / "tiny-check.json").write_text(json.dumps(doc))
    code, out, err = cli(base, capsys)
    assert code == 1 and "1 metric(s) not replayed bit for bit" in err
    assert "not replayed: tiny-check: a seed1: test.t2i_meanr" in out
    # a reference of a recipe that no longer exists is stale; --update removes it
    (ref / "old-recipe.json").write_text(json.dumps({**doc, "recipe": "old-recipe"}))
    code, out, _ = cli(base, capsys)
    assert code == 1 and "old-recipe.json" in out
    # a changed config makes the reference stale
    (folder / "t" / "check.yaml").write_text(RECIPE.replace("lr: 0.005", "lr: 0.004"))
    code, out, _ = cli(base, capsys)
    assert code == 1 and "its config changed since the reference was recorded" in out
    # --rehash re-keys the references without running; the next check finds that the
    # numbers did change (the learning rate did): not replayed bit for bit
    (ref / "old-recipe.json").unlink()
    assert cli(["check", "--reference", str(ref), "--rehash", "--update"], capsys)[0] == 2
    code, out, _ = cli(["check", "--reference", str(ref), "--rehash"], capsys)
    assert code == 0 and "tiny-check: 2 cell(s) re-keyed" in out and "1 reference(s) re-keyed" in out
    rekeyed = json.loads((ref / "tiny-check.json").read_text())
    assert [c["hash"] for c in rekeyed["cells"]] != [c["hash"] for c in doc["cells"]]
    assert [c["runs"] for c in rekeyed["cells"]] == [c["runs"] for c in doc["cells"]]
    assert "0 reference(s) re-keyed" in cli(["check", "--reference", str(ref), "--rehash"], capsys)[1]
    code, out, err = cli(base, capsys)
    assert code == 1 and "not replayed: tiny-check: a seed" in out and "its config changed" not in out


@pytest.mark.slow
def test_update_refuses_a_cell_at_chance_and_a_false_near_chance_declaration(recipes, tmp_path, capsys):
    folder, ref = recipes
    untrained = RECIPE.replace("epochs: 1", "epochs: 0")
    (folder / "t" / "check.yaml").write_text(untrained)
    code, out, err = cli(["check", "tiny-check", "--reference", str(ref), "--update", *LEARNING], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "row 'a'" in err and "not above the learning bar" in err and "tiny-check" in err
    assert "refused: tiny-check: row 'b'" in out and not (ref / "tiny-check.json").exists()
    # declared near chance, the untrained model is recorded and checked
    (folder / "t" / "check.yaml").write_text(untrained + "near_chance: {a: \"fails in the paper\", b: \"too\"}\n")
    code, out, err = cli(["check", "tiny-check", "--reference", str(ref), "--update", *LEARNING], capsys)
    assert code == 0, out + err
    assert {c["expect"] for c in json.loads((ref / "tiny-check.json").read_text())["cells"]} == {"near_chance"}
    code, out, err = cli(["check", "tiny-check", "--reference", str(ref), *LEARNING], capsys)
    assert code == 0 and "| 2/2 " in out, out + err
    # a model that learns, declared near chance: refused
    (folder / "t" / "check.yaml").write_text(RECIPE + "near_chance: {a: \"the paper says it fails\"}\n")
    code, out, err = cli(["check", "tiny-check", "--reference", str(ref), "--update", *LEARNING], capsys)
    assert code == 2 and "row 'a'" in err and "declared near chance" in err and "it learns here" in err


def test_unknown_layers_and_bad_references_are_one_line_errors(recipes, capsys):
    _folder, ref = recipes
    code, _, err = cli(["check", "--reference", str(ref), "--layers", "learning,vibes"], capsys)
    assert code == 2 and "unknown layer 'vibes'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["check", "tiny-check", "--reference", str(ref), *LEARNING, "--rows", "zz"], capsys)
    assert code == 2 and "no row(s) zz" in err
    (ref / "tiny-check.json").write_text("{ not json")
    code, _, err = cli(["check", "tiny-check", "--reference", str(ref), *LEARNING, "--rows", "b"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tiny-check.json" in err and "corrupted reference file" in err


# ---------------------------------------------------------------------------------
# the committed references


def _committed() -> list[Path]:
    return sorted(p for p in REFERENCE.glob("*.json") if p.name != "goldens.json")


def test_every_committed_reference_is_clearly_above_chance_and_current():
    from xmrbench.recipe.load import recipe_index

    files = _committed()
    assert files
    index = recipe_index()
    for path in files:
        doc = read_reference(path)
        assert doc["recipe"] in index and doc["profile"] == PROFILE, path
        assert doc["seeds"] == list(REFERENCE_SEEDS), path
        resolved = resolve(index[doc["recipe"]], profile=PROFILE)
        cells = {c.id: c for c in resolved.runnable_cells() if not resolved.not_gated(c)}
        assert {c["cell"] for c in doc["cells"]} == set(cells), f"{path}: stale, re-record with --update"
        for entry in doc["cells"]:
            cell = cells[entry["cell"]]
            assert entry["hash"] == cell.hash, f"{path}: {cell.id}: stale"
            assert entry["expect"] == ("near_chance" if resolved.near_chance(cell) else "learns")
            for proto, check in entry["checks"].items():
                runs = [entry["runs"][str(s)][proto] for s in doc["seeds"]]
                chance = C.chance_level(check["metric"], images=check["images"],
                                        captions_per_image=check["captions_per_image"], folds=check["folds"],
                                        runs=runs)
                floor = FLOOR_QUERIES * C.resolution(check["metric"], images=check["images"],
                                                     captions_per_image=check["captions_per_image"],
                                                     folds=check["folds"], runs=runs)
                values = check["values"]
                assert len(values) == len(REFERENCE_SEEDS)
                assert check["chance"] == pytest.approx(chance) and check["bar"] == pytest.approx(BAR * chance)
                assert check["mean"] == pytest.approx(np.mean(values))
                assert check["tolerance"] == pytest.approx(tolerance(values, n_gate=len(GATE_SEEDS), floor=floor))
                where = f"{path.name}: {cell.id}: {proto}"
                if entry["expect"] == "learns":
                    assert check["mean"] - check["tolerance"] >= BAR * chance, where
                else:
                    assert check["mean"] <= NEAR * chance, where
            assert sorted(int(s) for s in entry["runs"]) == list(REFERENCE_SEEDS)
        assert path.stat().st_size < 512 * 1024  # metrics only, no ranks


# ---------------------------------------------------------------------------------
# mutants: the learning layer alone must catch them


def _zero_loss(monkeypatch, name):
    from xmrbench.core.losses.registry import LOSSES

    def zero(self, img_emb, txt_emb, **kw):
        return 0.0 * (img_emb.sum() + txt_emb.sum())

    monkeypatch.setattr(LOSSES[name], "forward", zero)


def _noise_similarity(monkeypatch, name):
    from xmrbench.core.models.registry import MODELS

    cls = MODELS[name]
    real_sim, real_pairs = cls.similarity, cls.pair_scores

    def noisy(self, img_emb, txt_emb):
        sims = real_sim(self, img_emb, txt_emb)
        gen = torch.Generator().manual_seed(int(sims.numel()))
        return torch.rand(sims.shape, generator=gen).to(sims) + 0.0 * sims

    def noisy_pairs(self, img_emb, txt_emb):
        scores = real_pairs(self, img_emb, txt_emb)
        gen = torch.Generator().manual_seed(int(scores.numel()))
        return torch.rand(scores.shape, generator=gen).to(scores) + 0.0 * scores

    monkeypatch.setattr(cls, "similarity", noisy)
    monkeypatch.setattr(cls, "pair_scores", noisy_pairs)


MUTANTS = [
    ("zero loss hardest_negative", _zero_loss, "hardest_negative", "vsepp-flickr30k", "vsepp-mh"),
    ("zero loss triplet_sum", _zero_loss, "triplet_sum", "vsepp-flickr30k", "vse0-sh"),
    ("zero loss bidirectional_ranking", _zero_loss, "bidirectional_ranking", "two-branch-table5", "image-sentence"),
    ("zero loss logistic", _zero_loss, "logistic", "two-branch-table2", "similarity-net"),
    ("noise similarity vsepp", _noise_similarity, "vsepp", "vsepp-flickr30k", "vsepp-mh"),
    ("noise similarity two_branch_similarity", _noise_similarity, "two_branch_similarity", "two-branch-table2",
     "similarity-net"),
    ("noise similarity scan", _noise_similarity, "scan", "aoq-table2", "scan-t2i"),
    ("noise similarity cca", _noise_similarity, "cca", "two-branch-table2", "cca-fv-hglmm-12"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("mutate", "name", "recipe", "row"), [m[1:] for m in MUTANTS], ids=[m[0] for m in MUTANTS])
def test_the_learning_layer_catches_a_broken_model(mutate, name, recipe, row, monkeypatch, capsys):
    mutate(monkeypatch, name)
    code, out, err = cli(["check", recipe, "--rows", row, "--layers", "learning", "--executor", "local"], capsys)
    assert code == 1, out + err
    failed = out.split("learning checks that failed:")[1]
    assert f"learning failed: {recipe}/{row} " in failed
    assert "other problem(s)" in err and " 0 other problem(s)" in err  # the learning check, not a missing run
