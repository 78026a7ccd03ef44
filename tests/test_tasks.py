"""Evaluation tasks other than image-sentence retrieval, against naive computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.core.models.registry import MODELS
from xmrbench.data.dataset import RetrievalData
from xmrbench.engine.evaluate import encode, evaluate_split, similarity_matrix
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.tasks import TASKS, evaluate_protocols
from xmrbench.errors import DataError
from xmrbench.recipe.config import validate_cell_config

from support import IdentityModel
from toy import toy_data

CFG = validate_cell_config({"model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
                            "loss": {"name": "bidirectional_ranking"}}, where="t")
KW = dict(device=torch.device("cpu"), batch_size=16, block_images=7, sentence=False)


def _labelled() -> RetrievalData:
    data = toy_data()
    loaders = dict(data.loaders)
    test = loaders["test"]()
    test.extras["labels"] = np.arange(test.n_images) % 4  # four classes
    loaders["test"] = lambda: test
    return RetrievalData(name="toy", fingerprint="toy-labels", loaders=loaders)


def _model(prepared):
    torch.manual_seed(1)
    return MODELS["two_branch_embedding"](CFG.model.params, prepared.dims).eval()


def naive_ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision with ties ranked pessimistically (relevant items after equal scores)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], relevant[j]))
    hits, total = 0, 0.0
    for pos, j in enumerate(order, start=1):
        if relevant[j]:
            hits += 1
            total += hits / pos
    return total / max(1, relevant.sum())


def test_protocol_registry_lists_the_tasks():
    assert {p.task for p in PROTOCOLS.values()} == set(TASKS) == {"image_text", "label", "sentence", "phrase"}
    assert PROTOCOLS["test_labels"].task == "label" and PROTOCOLS["test_s2s"].task == "sentence"
    assert PROTOCOLS["test_phrases"].task == "phrase"


def test_label_map_equals_a_naive_loop():
    prepared = PreparedData(_labelled(), CFG.data, "global", "tfidf")
    model = _model(prepared)
    split = prepared.split("test")
    got, ranks = TASKS["label"](model, split, PROTOCOLS["test_labels"], **KW)
    sims = similarity_matrix(model, encode(model, split, device=torch.device("cpu"), batch_size=64),
                             block_images=1000).numpy().astype(np.float64)
    img_labels = split.split.extras["labels"]
    txt_labels = img_labels[split.caption_image()]
    i2t = np.mean([naive_ap(sims[i], txt_labels == img_labels[i]) for i in range(sims.shape[0])])
    t2i = np.mean([naive_ap(sims[:, j], img_labels == txt_labels[j]) for j in range(sims.shape[1])])
    assert got[K.I2T_MAP] == pytest.approx(i2t, abs=1e-6) and got[K.T2I_MAP] == pytest.approx(t2i, abs=1e-6)
    assert got[K.AVG_MAP] == pytest.approx((i2t + t2i) / 2, abs=1e-6) and ranks == {}


def test_label_task_without_labels_is_a_one_line_error():
    prepared = PreparedData(toy_data(), CFG.data, "global", "tfidf")
    with pytest.raises(DataError, match="no labels"):
        TASKS["label"](_model(prepared), prepared.split("test"), PROTOCOLS["test_labels"], **KW)


def test_sentence_task_equals_the_sentence_flag_of_image_text():
    prepared = PreparedData(toy_data(), CFG.data, "global", "tfidf")
    model = _model(prepared)
    metrics, _ = evaluate_protocols(model, prepared, ("test", "test_s2s"), **KW)
    with_flag, _ = evaluate_split(model, prepared.split("test"), device=torch.device("cpu"), batch_size=16,
                                  block_images=7, sentence=True)
    assert metrics["test_s2s"] == {k: with_flag[k] for k in (K.S2S_R1, K.S2S_R5, K.S2S_R10)}
    assert metrics["test"] == {k: v for k, v in with_flag.items() if not k.startswith("s2s")}


# --- phrase localization -------------------------------------------------------------

WORDS = {"dog": [1.0, 0.0, 0.0], "cat": [1.0, 0.0, 0.0], "ball": [0.0, 0.0, 1.0]}


def _phrase_split():
    from xmrbench.core.models.base import TextBatch
    from xmrbench.data.dataset import Split
    from xmrbench.data.entities import EntitiesSplit, Phrase
    from xmrbench.engine.inputs import PreparedSplit

    # one image, one caption "dog cat ball": dog and cat are findable, the ball has no proposal
    ents = EntitiesSplit(
        name="test", captions=["dog cat ball"], captions_per_image=1,
        phrases=[[Phrase(0, 1, "e1"), Phrase(1, 2, "e2"), Phrase(2, 3, "e3")]],
        entities=[{"e1": np.array([[0, 0, .5, .5]], np.float32), "e2": np.array([[.5, .5, 1, 1]], np.float32),
                   "e3": np.array([[.2, .6, .3, .7]], np.float32)}],
        sizes=np.array([[1.0, 1.0]]), proposal_offsets=np.array([0, 3]),
        proposal_boxes=np.array([[0, 0, .5, .5], [.5, .5, 1, 1], [.9, .9, 1, 1]], np.float32),
        proposal_feats=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
    )
    split = Split(name="test", captions=ents.captions, captions_per_image=1,
                  global_feats=np.zeros((1, 3), np.float32), extras={"entities": ents})
    strings = lambda texts: TextBatch(vectors=torch.tensor([WORDS[t] for t in texts]))  # noqa: E731
    return PreparedSplit(split=split, image_input="global", text=None, strings=strings)


def test_phrase_localization_by_hand():
    """dog: its correct proposal scores highest (rank 1). cat: scored like the dog, its correct
    proposal (score 0) ties with an incorrect one and ranks after it (rank 3, ties count
    against). ball: no proposal overlaps it (a miss at every K, outside the upper bound)."""
    metrics, ranks = TASKS["phrase"](IdentityModel(), _phrase_split(), PROTOCOLS["test_phrases"], **KW)
    assert ranks == {"phrase": [1, 3, 0]}
    # chance of R@1: one correct proposal of three for the dog and the cat, none for the ball
    assert metrics == pytest.approx({K.PL_R1: 100 / 3, K.PL_R5: 200 / 3, K.PL_R10: 200 / 3, K.PL_UPPER: 200 / 3,
                                     K.PL_R1_CHANCE: 100 * (1 / 3 + 1 / 3 + 0) / 3, K.PL_PHRASES: 3.0})


def test_correct_rank_equals_a_naive_pessimistic_sort():
    from xmrbench.core.metrics.phrase import correct_rank

    gen = torch.Generator().manual_seed(5)
    for _ in range(200):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        scores = torch.randint(0, 3, (n,), generator=gen).float()  # many ties
        correct = torch.rand(n, generator=gen) < 0.3
        order = sorted(range(n), key=lambda i: (-float(scores[i]), bool(correct[i])))
        want = next((pos + 1 for pos, i in enumerate(order) if correct[i]), None)
        assert correct_rank(scores, correct) == want
