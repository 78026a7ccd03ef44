"""The gate's learning layer on label retrieval (mAP): the chance level of a random ranking
against an exhaustive count, a hand-checked case and Monte-Carlo simulations; the chance
keys the ``label`` task records; the headline metric, floor and chance level the gate
takes for a label protocol; and the gate end to end on a tiny ACMR recipe (record, pass,
a cell at chance refused, a model scoring noise failing the bar)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.labels import average_precision, label_metrics, relevance_from_labels
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.errors import ConfigError
from xmrbench.gate import chance as C
from xmrbench.gate.check import CellRuns, reference_doc
from xmrbench.gate.learning import BAR, FLOOR_QUERIES, GATE_SEEDS, REFERENCE_SEEDS, LearningCheck, tolerance
from xmrbench.recipe.resolve import resolve

from support import BASES, cli

pytestmark = pytest.mark.usefixtures("one_thread")

CHANCE_KEYS = (K.I2T_MAP_CHANCE, K.T2I_MAP_CHANCE, K.AVG_MAP_CHANCE)


# ---------------------------------------------------------------------------------
# the chance level of one query's AP


def _ap(relevant_in_order) -> float:
    """AP of a ranked list given the relevance of its items in rank order (the definition)."""
    hits, total = 0, 0.0
    for pos, rel in enumerate(relevant_in_order, start=1):
        if rel:
            hits += 1
            total += hits / pos
    return total / hits if hits else 0.0


def test_a_hand_checked_tiny_case():
    # two items, one relevant: first (AP 1) or second (AP 1/2), each with probability 1/2
    assert C.chance_average_precision(2, 1) == pytest.approx(0.75)
    assert C.chance_average_precision(2, [0, 1, 2]).tolist() == pytest.approx([0.0, 0.75, 1.0])
    assert C.chance_average_precision(1, [0, 1]).tolist() == [0.0, 1.0]
    # every item relevant: AP 1 whatever the order
    assert C.chance_average_precision(37, 37) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        C.chance_average_precision(5, 6)


@pytest.mark.parametrize("n", [3, 5, 6])
def test_the_closed_form_equals_an_exhaustive_count(n):
    for r in range(n + 1):
        items = [True] * r + [False] * (n - r)
        orders = list(itertools.permutations(items))
        want = sum(_ap(order) for order in orders) / len(orders)
        assert C.chance_average_precision(n, r) == pytest.approx(want, abs=1e-12), (n, r)


@pytest.mark.parametrize(("n", "r"), [(10, 3), (50, 1), (50, 17), (120, 60)])
def test_the_closed_form_is_what_random_scores_give_one_query(n, r):
    gen = torch.Generator().manual_seed(1000 * n + r)
    draws = 3000
    relevance = torch.zeros(draws, n, dtype=torch.bool)
    relevance[:, :r] = True
    aps = average_precision(torch.rand(draws, n, generator=gen, dtype=torch.float64), relevance).numpy()
    se = aps.std(ddof=1) / math.sqrt(draws)
    assert abs(aps.mean() - C.chance_average_precision(n, r)) < 4 * se + 1e-12


def _labels(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "single":
        return torch.randint(0, 6, (n,), generator=gen)
    return (torch.rand(n, 5, generator=gen) < 0.25).to(torch.int64)  # some rows carry no label


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_the_chance_map_of_a_split_is_what_random_scores_give(kind):
    """Random single or multi-hot labels (multi-hot rows without a label: queries with
    R = 0, AP 0 as the metric scores them), many random similarity matrices."""
    gen = torch.Generator().manual_seed(7 if kind == "single" else 8)
    img, txt = _labels(kind, 30, gen), _labels(kind, 45, gen)
    rel = relevance_from_labels(img, txt)
    if kind == "multi":
        assert (rel.sum(1) == 0).any() and (rel.sum(0) == 0).any() and (rel.sum(1) > 1).any()
    want = C.chance_label_map(rel)
    draws = 600
    got = {key: [] for key in (K.I2T_MAP, K.T2I_MAP, K.AVG_MAP)}
    for _ in range(draws):
        metrics = label_metrics(torch.rand(30, 45, generator=gen, dtype=torch.float64), rel)
        for key in got:
            got[key].append(metrics[key])
    for key, chance_key in C.MAP_CHANCE_KEYS.items():
        values = np.asarray(got[key])
        se = values.std(ddof=1) / math.sqrt(draws)
        assert abs(values.mean() - want[chance_key]) < 4 * se, key
    assert want[K.AVG_MAP_CHANCE] == pytest.approx((want[K.I2T_MAP_CHANCE] + want[K.T2I_MAP_CHANCE]) / 2)
    # the split's chance level is the mean over its queries of the per-query closed form
    assert want[K.I2T_MAP_CHANCE] == pytest.approx(float(np.mean(C.chance_average_precision(45, rel.sum(1).numpy()))))


# ---------------------------------------------------------------------------------
# the label task records the chance level; the keys are not results


def test_the_label_task_records_the_chance_level_of_its_split():
    from xmrbench.core.models.registry import MODELS
    from xmrbench.data.dataset import RetrievalData
    from xmrbench.engine.inputs import PreparedData
    from xmrbench.engine.tasks import TASKS
    from xmrbench.recipe.config import validate_cell_config

    from toy import toy_data

    data = toy_data()
    loaders = dict(data.loaders)
    test = loaders["test"]()
    test.extras["labels"] = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3] * (test.n_images // 10) + [0] * (test.n_images % 10))
    loaders["test"] = lambda: test
    cfg = validate_cell_config({"model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
                                "loss": {"name": "bidirectional_ranking"}}, where="t")
    prepared = PreparedData(RetrievalData(name="toy", fingerprint="toy-map-chance", loaders=loaders), cfg.data,
                            "global", "tfidf")
    torch.manual_seed(1)
    model = MODELS["two_branch_embedding"](cfg.model.params, prepared.dims).eval()
    split = prepared.split("test")
    kw = dict(device=torch.device("cpu"), batch_size=16, block_images=7, sentence=False)
    got, _ = TASKS["label"](model, split, PROTOCOLS["test_labels"], **kw)
    img = torch.as_tensor(test.extras["labels"])
    txt = img[torch.from_numpy(split.caption_image())]
    assert len(txt) > len(img)  # several texts per image: the two directions' galleries differ
    want = C.chance_label_map(relevance_from_labels(img, txt))
    for key in CHANCE_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got[K.I2T_MAP_CHANCE] != pytest.approx(got[K.T2I_MAP_CHANCE])
    assert 0 < got[K.AVG_MAP_CHANCE] < 1
    # the mAP@50 protocol has other keys and no chance level of its own
    at50, _ = TASKS["label"](model, split, PROTOCOLS["test_labels_map50"], **kw)
    assert not set(CHANCE_KEYS) & set(at50)


def test_the_chance_keys_are_fractions_that_are_not_results():
    from xmrbench.recipe.load import load_recipe, recipe_index

    for key in CHANCE_KEYS:
        spec = K.METRICS[key]
        assert spec.scale == "fraction" and not spec.higher_is_better and "chance" in spec.description
    assert [C.MAP_CHANCE_KEYS[k] for k in (K.I2T_MAP, K.T2I_MAP, K.AVG_MAP)] == list(CHANCE_KEYS)
    acmr = [path for rid, path in recipe_index().items() if rid.startswith("acmr-")]
    assert acmr
    for path in acmr:  # a report shows a recipe's columns: never a chance level
        recipe, _ = load_recipe(path)
        assert not set(CHANCE_KEYS) & set(recipe.columns), path


# ---------------------------------------------------------------------------------
# headline metric, floor and chance level of a label protocol


LABEL_METRICS = {K.I2T_MAP: 0.4, K.T2I_MAP: 0.5, K.AVG_MAP: 0.45, K.I2T_MAP_CHANCE: 0.1, K.T2I_MAP_CHANCE: 0.12,
                 K.AVG_MAP_CHANCE: 0.11, "i2t_p50": 0.3}


def test_the_headline_of_a_label_protocol_is_avg_map_and_rsum_stays_first():
    assert C.headline_metric(LABEL_METRICS) == K.AVG_MAP
    assert C.headline_metric({**LABEL_METRICS, K.RSUM: 300.0}) == K.RSUM
    with pytest.raises(ConfigError, match="no chance level"):  # mAP@50 has no chance level here
        C.headline_metric({K.I2T_MAP50: 0.4, K.T2I_MAP50: 0.5, K.AVG_MAP50: 0.45})
    with pytest.raises(ConfigError, match="no chance level"):
        C.headline_metric({K.I2T_MAP: 0.5})


def test_the_floor_of_avg_map_is_two_queries_worth_in_each_direction():
    # one image query moves i2t_map by at most 1/n_images, one text query t2i_map by at most
    # 1/n_texts; avg_map is their mean: one of each moves it by half the sum, twice that is the floor
    assert C.resolution(K.AVG_MAP, images=100, captions_per_image=1) == pytest.approx(0.01)
    assert FLOOR_QUERIES * C.resolution(K.AVG_MAP, images=100, captions_per_image=1) == pytest.approx(0.02)
    assert FLOOR_QUERIES * C.resolution(K.AVG_MAP, images=200, captions_per_image=5) == pytest.approx(
        1 / 200 + 1 / 1000)
    assert C.resolution(K.AVG_MAP, images=500, captions_per_image=1, folds=5) == C.resolution(
        K.AVG_MAP, images=100, captions_per_image=1)
    assert C.resolution(K.I2T_MAP, images=100, captions_per_image=2) == pytest.approx(0.01)
    assert C.resolution(K.T2I_MAP, images=100, captions_per_image=2) == pytest.approx(0.005)
    # measured: one image query and one text query go from their worst AP to 1, which is
    # nearly the bound (image 0 and text 0 are each other's only relevant item; all ties,
    # ranked pessimistically, put it last; a score of 1 puts it first both ways)
    n_img, cpi = 8, 2
    n_txt = n_img * cpi
    rel = torch.zeros(n_img, n_txt, dtype=torch.bool)
    rel[0, 0] = True
    worst, best = torch.zeros(n_img, n_txt), torch.zeros(n_img, n_txt)
    best[0, 0] = 1.0
    moved = {key: label_metrics(best, rel)[key] - label_metrics(worst, rel)[key]
             for key in (K.I2T_MAP, K.T2I_MAP, K.AVG_MAP)}
    assert moved[K.I2T_MAP] == pytest.approx((1 - 1 / n_txt) / n_img)
    assert moved[K.T2I_MAP] == pytest.approx((1 - 1 / n_img) / n_txt)
    for key, value in moved.items():
        assert 0 < value <= C.resolution(key, images=n_img, captions_per_image=cpi), key
    # rsum is unchanged
    assert FLOOR_QUERIES * C.resolution(K.RSUM, images=100, captions_per_image=5) == pytest.approx(7.2)


def test_the_chance_level_of_a_map_is_read_from_the_runs():
    runs = [LABEL_METRICS, {**LABEL_METRICS, K.AVG_MAP_CHANCE: 0.13}]
    assert C.chance_level(K.AVG_MAP, images=100, captions_per_image=1, runs=runs) == pytest.approx(0.12)
    assert C.chance_level(K.I2T_MAP, images=100, captions_per_image=1, runs=runs) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="depends on the split's labels"):
        C.chance_level(K.AVG_MAP, images=100, captions_per_image=1)
    with pytest.raises(ConfigError, match="run it again"):
        C.chance_level(K.AVG_MAP, images=100, captions_per_image=1, runs=[{K.AVG_MAP: 0.4}])
    assert C.chance_level(K.RSUM, images=100, captions_per_image=5, runs=runs) == C.chance_rsum(100)


def test_a_map_check_prints_fractions():
    check = LearningCheck("r", "c", "test_labels", K.AVG_MAP, "learns", 0.1234, 0.2468, 0.45, 0.02, (0.15, 0.16, 0.14))
    assert not check.passed
    assert "0.1500" in check.why() and "below the learning bar 0.2468 (chance 0.1234)" in check.why()


# ---------------------------------------------------------------------------------
# the gate on a tiny label recipe


def _recipe(rid: str = "tiny-map-check", dim: int = 8) -> str:
    """One CCA row (closed form, seconds) on the tiny synthetic Pascal set, extending the
    ACMR base by its absolute path (the recipe is written outside ``recipes/``)."""
    return (
        f"id: {rid}\nextends: {BASES / 'acmr.yaml'}\ntable: T\ntitle: label gate test\n"
        "protocols:\n  test_labels: {dataset: pascal_sentences, split: test, captions_per_image: 1}\n"
        "config:\n  data: {dataset: pascal}\n"
        "profiles:\n  smoke:\n    seeds: [0]\n    config:\n"
        "      data: {name: synthetic_labelled, dataset: pascal, size: tiny, dev_from_train: 50}\n"
        f"rows:\n  - {{id: cca, label: CCA, set: {{model.name: cca, model.dim: {dim}}}}}\n"
    )


@pytest.fixture
def label_recipes(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "t").mkdir(parents=True)
    (folder / "t" / "map.yaml").write_text(_recipe())
    monkeypatch.setenv("XMRBENCH_RECIPES", str(folder))
    ref = tmp_path / "reference"
    ref.mkdir()
    return folder, ref


def _runs_at(resolved, value: float, chance: float, spread: float = 0.0) -> list[CellRuns]:
    cell = resolved.runnable_cells()[0]
    runs = CellRuns(cell)
    runs.splits["test_labels"] = {"images": 100, "captions_per_image": 1, "folds": 1}
    for i, seed in enumerate(resolved.seeds):
        v = value + spread * (i % 2 - 0.5)
        runs.metrics[seed] = {"test_labels": {K.I2T_MAP: v, K.T2I_MAP: v, K.AVG_MAP: v, K.I2T_MAP_CHANCE: chance,
                                              K.T2I_MAP_CHANCE: chance, K.AVG_MAP_CHANCE: chance}}
    return [runs]


def test_recording_refuses_a_label_cell_at_chance_and_keeps_one_that_learns(label_recipes):
    folder, _ = label_recipes
    resolved = resolve(folder / "t" / "map.yaml", profile="smoke", seeds=list(REFERENCE_SEEDS))
    doc, refused = reference_doc(resolved, _runs_at(resolved, 0.17, 0.17, spread=0.01))
    assert len(refused) == 1 and "row 'cca'" in refused[0] and "test_labels avg_map 0.170" in refused[0]
    assert "not above the learning bar 0.340" in refused[0]
    # a deterministic cell just above the bar: the floor (two queries' worth each way) decides
    _, refused = reference_doc(resolved, _runs_at(resolved, 0.34 + 0.015, 0.17))
    assert refused and "band [0.335, 0.375]" in refused[0]
    doc, refused = reference_doc(resolved, _runs_at(resolved, 0.43, 0.17))
    assert not refused
    check = doc["cells"][0]["checks"]["test_labels"]
    assert check["metric"] == K.AVG_MAP and check["chance"] == pytest.approx(0.17)
    assert check["bar"] == pytest.approx(BAR * 0.17) and check["floor"] == pytest.approx(0.02)
    assert check["tolerance"] == pytest.approx(0.02)


def _noise_similarity(monkeypatch):
    from xmrbench.core.models.registry import MODELS

    cls = MODELS["cca"]
    real = cls.similarity

    def noisy(self, img_emb, txt_emb):
        sims = real(self, img_emb, txt_emb)
        gen = torch.Generator().manual_seed(int(sims.numel()))
        return torch.rand(sims.shape, generator=gen).to(sims) + 0.0 * sims

    monkeypatch.setattr(cls, "similarity", noisy)


@pytest.mark.slow
def test_the_gate_records_and_checks_a_label_recipe(label_recipes, tmp_path, monkeypatch, capsys):
    _folder, ref = label_recipes
    layers = ["--layers", "learning,replay", "--executor", "local"]
    store = tmp_path / "store"
    code, out, err = cli(["check", "--reference", str(ref), "--results", str(store), "--update", *layers], capsys)
    assert code == 0 and "check updated: 1 recipe(s)" in out, out + err
    doc = json.loads((ref / "tiny-map-check.json").read_text())
    (entry,) = doc["cells"]
    check = entry["checks"]["test_labels"]
    runs = [entry["runs"][str(s)]["test_labels"] for s in REFERENCE_SEEDS]
    assert check["metric"] == K.AVG_MAP and check["images"] == 100 and check["captions_per_image"] == 1
    assert check["chance"] == pytest.approx(np.mean([r[K.AVG_MAP_CHANCE] for r in runs]))
    assert 0 < check["chance"] < 0.5 and check["bar"] == pytest.approx(BAR * check["chance"])
    assert check["floor"] == pytest.approx(1 / 100 + 1 / 100)
    assert check["tolerance"] == pytest.approx(tolerance(check["values"], n_gate=len(GATE_SEEDS), floor=0.02))
    assert check["mean"] - check["tolerance"] >= check["bar"]
    # the gate seeds pass, and replay bit for bit here
    code, out, err = cli(["check", "--reference", str(ref), "--results", str(store), *layers], capsys)
    assert code == 0 and "check passed" in out and "| 1/1 " in out and " identical" in out, out + err
    # a model that scores noise is at chance: below the bar (a fresh store: nothing reused)
    _noise_similarity(monkeypatch)
    code, out, err = cli(["check", "--reference", str(ref), "--results", str(tmp_path / "noise"), "--layers",
                          "learning", "--executor", "local"], capsys)
    assert code == 1 and "1 learning check(s) failed" in err, out + err
    failed = out.split("learning checks that failed:")[1]
    assert "learning failed: tiny-map-check/" in failed and "test_labels.avg_map" in failed
    assert "below the learning bar" in failed and all(len(line) < 200 for line in failed.splitlines())
