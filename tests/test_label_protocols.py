"""The two label protocols (whole-list mAP and the released ACMR mAP@50), the
precision-scope keys, and ``xmrbench evaluate`` with labels: against naive loops, hand
checks, and the engine's ``label`` task on the same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.labels import label_metrics, relevance_from_labels
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.core.models.registry import MODELS
from xmrbench.data.dataset import RetrievalData
from xmrbench.engine.evaluate import encode, similarity_matrix
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.tasks import TASKS
from xmrbench.recipe.config import validate_cell_config

from support import cli
from toy import toy_data

CFG = validate_cell_config({"model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
                            "loss": {"name": "bidirectional_ranking"}}, where="t")
KW = dict(device=torch.device("cpu"), batch_size=32, block_images=11, sentence=False)
N_TEST = 60  # 60 images x 5 captions: image queries see 300 texts, text queries 60 images


# --------------------------------------------------------------------------- naive references


def naive_ranking(scores, relevant) -> list[bool]:
    """Relevance down the ranking: decreasing score, within a tie irrelevant items first."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), bool(relevant[j])))
    return [bool(relevant[j]) for j in order]


def naive_ap(scores, relevant, *, at: int | None = None) -> float:
    """AP over the whole list divided by all relevant items (``at=None``), or over the top
    ``at`` divided by the relevant items found there (the released ACMR mAP@50)."""
    ranked = naive_ranking(scores, relevant)
    if at is not None:
        ranked = ranked[:at]
    hits, total = 0, 0.0
    for position, rel in enumerate(ranked, start=1):
        if rel:
            hits += 1
            total += hits / position
    z = hits if at is not None else sum(bool(r) for r in relevant)
    return total / z if z else 0.0


def naive_precision(scores, relevant, k: int) -> float:
    return sum(naive_ranking(scores, relevant)[:k]) / k


def naive_relevant(a, b) -> bool:
    if np.ndim(a) == 0:
        return bool(a == b)
    return any(x and y for x, y in zip(a, b, strict=True))


def naive_metrics(sims: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> dict[str, float]:
    """Every key of both label protocols, query by query, with Python loops."""
    n_q, n_g = sims.shape
    rel = np.array([[naive_relevant(q_labels[i], g_labels[j]) for j in range(n_g)] for i in range(n_q)])
    out: dict[str, float] = {}
    for direction, scores, r in (("i2t", sims, rel), ("t2i", sims.T, rel.T)):
        out[f"{direction}_map"] = float(np.mean([naive_ap(scores[q], r[q]) for q in range(len(scores))]))
        out[f"{direction}_map50"] = float(np.mean([naive_ap(scores[q], r[q], at=50) for q in range(len(scores))]))
        for k in range(50, 1001, 50):
            if k <= scores.shape[1]:
                out[f"{direction}_p{k}"] = float(np.mean([naive_precision(scores[q], r[q], k)
                                                          for q in range(len(scores))]))
    out["avg_map"] = (out["i2t_map"] + out["t2i_map"]) / 2
    out["avg_map50"] = (out["i2t_map50"] + out["t2i_map50"]) / 2
    return out


# --------------------------------------------------------------------------- fixtures


def image_labels(n: int, multi: bool) -> np.ndarray:
    rng = np.random.default_rng(7)
    if not multi:
        return rng.integers(0, 4, size=n)
    labels = (rng.random((n, 5)) < 0.3).astype(np.uint8)
    labels[3] = 0  # an image with no label: relevant to nothing
    return labels


def scored_split(multi: bool):
    """(model, split, sims (N_img, N_txt) float32, image labels, caption labels)."""
    data = toy_data(n_test=N_TEST)
    loaders = dict(data.loaders)
    test = loaders["test"]()
    test.extras["labels"] = image_labels(test.n_images, multi)
    loaders["test"] = lambda: test
    prepared = PreparedData(RetrievalData(name="toy", fingerprint=f"toy-labels-{multi}", loaders=loaders),
                            CFG.data, "global", "tfidf")
    torch.manual_seed(3)
    model = MODELS["two_branch_embedding"](CFG.model.params, prepared.dims).eval()
    split = prepared.split("test")
    sims = similarity_matrix(model, encode(model, split, device=torch.device("cpu"), batch_size=64),
                             block_images=1000).numpy()
    img_labels = np.asarray(test.extras["labels"])
    return model, split, sims, img_labels, img_labels[split.caption_image()]


def precision_keys(n_img: int, n_txt: int) -> set[str]:
    return ({f"i2t_p{k}" for k in range(50, n_txt + 1, 50) if k <= 1000}
            | {f"t2i_p{k}" for k in range(50, n_img + 1, 50) if k <= 1000})


# --------------------------------------------------------------------------- the protocols


def test_the_two_label_protocols_name_their_map():
    full, at50 = PROTOCOLS["test_labels"], PROTOCOLS["test_labels_map50"]
    assert (full.task, full.split, full.folds, full.map_at) == ("label", "test", 1, None)
    assert (at50.task, at50.split, at50.folds, at50.map_at) == ("label", "test", 1, 50)
    assert "whole ranked list" in full.description and "i2t_map," in full.description
    assert "mAP@50" in at50.description and "top 50" in at50.description and "i2t_map50" in at50.description
    assert set(K.LABEL_MAP_KEYS[None]).isdisjoint(K.LABEL_MAP_KEYS[50])
    for key in (*K.LABEL_MAP_KEYS[None], *K.LABEL_MAP_KEYS[50], *K.I2T_PRECISION_KEYS, *K.T2I_PRECISION_KEYS):
        assert K.METRICS[key].scale == "fraction" and K.METRICS[key].higher_is_better
    assert "mAP@50" in K.METRICS[K.I2T_MAP50].description and "whole" in K.METRICS[K.I2T_MAP].description
    assert K.PRECISION_SCOPES == tuple(range(50, 1001, 50)) and K.precision_key("t2i", 1000) == "t2i_p1000"
    with pytest.raises(ValueError, match="no precision key"):
        K.precision_key("i2t", 60)


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi-hot"])
def test_label_task_equals_naive_loops_under_both_protocols(multi):
    model, split, sims, img_labels, txt_labels = scored_split(multi)
    want = naive_metrics(sims.astype(np.float64), img_labels, txt_labels)
    full, ranks = TASKS["label"](model, split, PROTOCOLS["test_labels"], **KW)
    at50, _ = TASKS["label"](model, split, PROTOCOLS["test_labels_map50"], **KW)
    scope = precision_keys(N_TEST, 5 * N_TEST)
    assert scope == {f"i2t_p{k}" for k in (50, 100, 150, 200, 250, 300)} | {"t2i_p50"}
    chance = {"i2t_map_chance", "t2i_map_chance", "avg_map_chance"}  # the gate's chance level (test_gate_map.py)
    assert set(full) == {"i2t_map", "t2i_map", "avg_map"} | scope | chance and ranks == {}
    assert set(at50) == {"i2t_map50", "t2i_map50", "avg_map50"} | scope  # never the whole-list keys
    for got in (full, at50):
        for key, value in got.items():
            if key not in chance:
                assert value == pytest.approx(want[key], abs=1e-6), key
    # the two mAPs really differ here, so a mix-up could not pass
    assert abs(full[K.I2T_MAP] - at50[K.I2T_MAP50]) > 1e-3


# --------------------------------------------------------------------------- hand checks and the cap


def test_map50_and_precision_by_hand():
    """One image query over 60 texts, relevant ones ranked 1st, 3rd and 55th: the paper's
    mAP is (1/1 + 2/3 + 3/55) / 3, the released mAP@50 sees two hits in the top 50 and
    gives (1/1 + 2/3) / 2; precision of the top 50 is 2/50."""
    scores = -np.arange(60, dtype=np.float64)
    relevant = np.zeros(60, dtype=bool)
    relevant[[0, 2, 54]] = True
    got = label_metrics(torch.from_numpy(scores[None, :]), torch.from_numpy(relevant[None, :]), maps=(None, 50))
    assert got[K.I2T_MAP] == pytest.approx((1 + 2 / 3 + 3 / 55) / 3)
    assert got[K.I2T_MAP50] == pytest.approx((1 + 2 / 3) / 2)
    assert got["i2t_p50"] == pytest.approx(2 / 50) and "i2t_p100" not in got
    assert not any(key.startswith("t2i_p") for key in got)  # text queries: a gallery of one image
    # all scores tied: every relevant item goes after the irrelevant ones (ranks 58, 59, 60)
    tied = label_metrics(torch.zeros(1, 60, dtype=torch.float64), torch.from_numpy(relevant[None, :]),
                         maps=(None, 50))
    assert tied[K.I2T_MAP] == pytest.approx((1 / 58 + 2 / 59 + 3 / 60) / 3)
    assert tied[K.I2T_MAP50] == 0.0 and tied["i2t_p50"] == 0.0


def test_precision_scope_stops_at_the_gallery_size():
    gen = torch.Generator().manual_seed(2)
    sims = torch.randn(3, 1000, generator=gen)
    rel = relevance_from_labels(torch.tensor([0, 1, 2]), torch.randint(0, 3, (1000,), generator=gen))
    got = label_metrics(sims, rel)
    assert [k for k in got if k.startswith("i2t_p")] == list(K.I2T_PRECISION_KEYS)
    assert not any(k.startswith("t2i_p") for k in got)  # 3 images: no top 50 exists
    # K = N_g: the whole gallery, whatever the scores
    assert got["i2t_p1000"] == pytest.approx(float(rel.double().mean()), abs=1e-6)
    got = label_metrics(sims[:, :149].contiguous(), rel[:, :149].contiguous())
    assert [k for k in got if k.startswith("i2t_p")] == ["i2t_p50", "i2t_p100"]
    with pytest.raises(ValueError, match="maps holds 10"):
        label_metrics(sims, rel, maps=(10,))
    with pytest.raises(ValueError, match="sequence"):
        label_metrics(sims, rel, maps=50)


# --------------------------------------------------------------------------- evaluate parity


def _save(tmp_path, **arrays) -> dict[str, str]:
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    return {name: str(tmp_path / f"{name}.npy") for name in arrays}


def _evaluate(paths, capsys, *extra) -> tuple[int, dict | None, str]:
    code, out, err = cli(["evaluate", "--sims", paths["S"], "--query-labels", paths["Q"],
                          "--gallery-labels", paths["G"], "--json", *extra], capsys)
    return code, (json.loads(out) if code == 0 else None), err


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi-hot"])
def test_evaluate_equals_the_label_task_on_the_same_scores(multi, tmp_path, capsys):
    model, split, sims, img_labels, txt_labels = scored_split(multi)
    paths = _save(tmp_path, S=sims, Q=img_labels, G=txt_labels)
    code, got, err = _evaluate(paths, capsys)
    assert code == 0, err
    full, _ = TASKS["label"](model, split, PROTOCOLS["test_labels"], **KW)
    at50, _ = TASKS["label"](model, split, PROTOCOLS["test_labels_map50"], **KW)
    chance = {"i2t_map_chance", "t2i_map_chance", "avg_map_chance"}  # the engine's only: the gate reads them
    assert set(got) == {"map"} | (set(full) - chance) | set(at50)
    for key, value in {**full, **at50}.items():
        if key not in chance:
            assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["map"] == got["i2t_map"]
    assert list(got)[:7] == ["map", "i2t_map", "t2i_map", "avg_map", "i2t_map50", "t2i_map50", "avg_map50"]


@pytest.mark.parametrize(("multi", "levels", "seed"), [(False, None, 0), (True, None, 1), (False, 3, 2), (True, 4, 3)])
def test_evaluate_equals_naive_loops_on_random_scores(multi, levels, seed, tmp_path, capsys):
    """Random scores (or a few levels: many ties) and random single or multi-hot labels."""
    rng = np.random.default_rng(seed)
    n_q, n_g = 23, 130
    sims = rng.normal(size=(n_q, n_g)) if levels is None else rng.integers(0, levels, size=(n_q, n_g)).astype(float)
    if multi:
        q, g = (rng.random((n_q, 6)) < 0.3), (rng.random((n_g, 6)) < 0.3).astype(np.int32)
    else:
        q, g = rng.integers(0, 5, size=n_q), rng.integers(0, 5, size=n_g).astype(np.int16)
    code, got, err = _evaluate(_save(tmp_path, S=sims, Q=q, G=g), capsys)
    assert code == 0, err
    want = naive_metrics(sims, q, g)
    assert set(got) == {"map"} | set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["map"] == pytest.approx(want["i2t_map"], abs=1e-9)


def test_evaluate_prints_a_table_naming_both_maps(tmp_path, capsys):
    rng = np.random.default_rng(5)
    paths = _save(tmp_path, S=rng.normal(size=(6, 9)), Q=rng.integers(0, 2, 6), G=rng.integers(0, 2, 9))
    code, out, err = cli(["evaluate", "--sims", paths["S"], "--query-labels", paths["Q"],
                          "--gallery-labels", paths["G"]], capsys)
    assert code == 0, err
    assert "i2t_map50" in out and "avg_map" in out


BAD_LABELS = [
    ("Q", np.zeros(5, dtype=int), "Q.npy: expected 6 labels (one per row"),
    ("G", np.zeros(8, dtype=int), "G.npy: expected 9 labels (one per column"),
    ("Q", np.array(3), "Q.npy: expected 6 labels"),
    ("Q", np.zeros((6, 2, 2), dtype=int), "Q.npy: expected 6 labels"),
    ("Q", np.zeros(6), "Q.npy: single labels (N,) must be integer class ids, got dtype float64"),
    ("G", np.array(list("abcdefghi")), "G.npy: single labels (N,) must be integer class ids"),
    ("G", np.where(np.eye(9, 3) > 0, np.nan, 0.0), "G.npy: multi-hot labels must hold only 0/1; row 0, column 0"),
    ("Q", np.full((6, 3), 2), "Q.npy: multi-hot labels must hold only 0/1; row 0, column 0 holds 2"),
    ("Q", np.zeros((6, 0)), "Q.npy: multi-hot labels with no class column"),
]


@pytest.mark.parametrize(("which", "array", "fragment"), BAD_LABELS)
def test_evaluate_bad_label_files_are_one_line_errors(which, array, fragment, tmp_path, capsys):
    rng = np.random.default_rng(6)
    arrays = {"S": rng.normal(size=(6, 9)), "Q": rng.integers(0, 3, 6), "G": rng.integers(0, 3, 9), which: array}
    code, _, err = _evaluate(_save(tmp_path, **arrays), capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_bad_pairs_of_files_are_one_line_errors(tmp_path, capsys):
    rng = np.random.default_rng(8)
    sims = rng.normal(size=(6, 9))
    cases = [
        ({"Q": rng.integers(0, 3, 6), "G": np.ones((9, 3), bool)},
         "G.npy: holds multi-hot labels (N, C) but Q.npy holds single labels (N,)"),
        ({"Q": np.ones((6, 4), int), "G": np.ones((9, 3), int)}, "G.npy: has 3 classes but Q.npy has 4"),
        ({"S": np.where(np.eye(6, 9) > 0, np.nan, sims), "Q": rng.integers(0, 3, 6), "G": rng.integers(0, 3, 9)},
         "S.npy: NaN or inf at row 0, column 0"),
        ({"S": np.zeros((0, 9)), "Q": np.zeros(0, int), "G": rng.integers(0, 3, 9)}, "S.npy: the matrix is empty"),
    ]
    for arrays, fragment in cases:
        code, _, err = _evaluate(_save(tmp_path, **{"S": sims, **arrays}), capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    paths = _save(tmp_path, S=sims, Q=rng.integers(0, 3, 6), G=rng.integers(0, 3, 9))
    code, _, err = _evaluate(paths, capsys, "--protocol", "5fold")
    assert code == 2 and "label metrics use the whole matrix" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["evaluate", "--sims", paths["S"], "--query-labels", paths["Q"]], capsys)
    assert code == 2 and "go together" in err
