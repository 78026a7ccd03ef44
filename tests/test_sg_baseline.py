"""A3VSE's unsupervised s_g baseline: r = s_g^T q against a naive loop over the raw
tags and caption words, a hand-checked case, the data contract and the engine path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.config import DataConfig
from xmrbench.core.metrics.retrieval import retrieval_metrics
from xmrbench.core.models.base import InputDims
from xmrbench.core.models.sg_baseline import SGBaseline
from xmrbench.core.text.vocab import tokenize
from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.engine.evaluate import encode, similarity_matrix
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.train import train_and_evaluate
from xmrbench.errors import ConfigError, DataError
from xmrbench.recipe.config import validate_cell_config

from toy import toy_split

TAGS = ["dog", "car", "tree", "animal", "vehicle", "plant", "colour", "living room", "boat", "pet"]
EXPANSION = {
    "dog": ["animal", "pet"],
    "cat": ["animal", "pet"],
    "bird": ["animal"],
    "car": ["vehicle"],
    "boat": ["vehicle"],
    "tree": ["plant"],
    "red": ["colour"],
    "blue": ["colour"],
    "house": ["living room"],
}


def tagged(split: Split, seed: int, tags: list[str] = TAGS) -> Split:
    """``split`` with random image tags (repeats included) and the expansion dictionary."""
    rng = np.random.default_rng(seed)
    per_image = []
    for _ in range(split.n_images):
        chosen = rng.choice(tags, size=int(rng.integers(0, 6)))
        per_image.append([[str(t), float(rng.random())] for t in chosen])
    split.extras.update(tags=per_image, tag_expansion=EXPANSION)
    return split


def tagged_data(seed: int = 0) -> RetrievalData:
    splits = {
        "train": tagged(toy_split("train", 30, 1), seed),
        "dev": tagged(toy_split("dev", 20, 2), seed + 1),
        "test": tagged(toy_split("test", 20, 3), seed + 2),
        "testall": tagged(toy_split("testall", 100, 3), seed + 3),
    }
    return RetrievalData(name="toy-tags", fingerprint="tags0", loaders={k: (lambda v=v: v) for k, v in splits.items()})


def naive_scores(split: Split) -> np.ndarray:
    """r[i, j] = sum over the concepts matched by caption j of image i's best score for it."""
    out = np.zeros((split.n_images, split.n_captions))
    known = {t for image in split.extras["tags"] for t, _ in image}
    for i, image in enumerate(split.extras["tags"]):
        best: dict[str, float] = {}
        for tag, score in image:
            best[tag] = max(best.get(tag, 0.0), score)
        for j, caption in enumerate(split.captions):
            matched = set()
            for word in set(tokenize(caption)):
                if word in known:
                    matched.add(word)
                matched.update(split.extras["tag_expansion"].get(word, []))
            out[i, j] = sum(best.get(c, 0.0) for c in matched)
    return out


def model_scores(data: RetrievalData, split_name: str) -> np.ndarray:
    prepared = PreparedData(data, DataConfig(), "tags", "tags")
    model = SGBaseline(SGBaseline.Params(), prepared.dims)
    split = prepared.split(split_name)
    enc = encode(model, split, device=torch.device("cpu"), batch_size=7)
    return similarity_matrix(model, enc, block_images=6).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_naive_loop(seed):
    data = tagged_data(seed)
    for name in ("test", "testall"):
        np.testing.assert_allclose(model_scores(data, name), naive_scores(data.split(name)), atol=1e-6)


def test_hand_checked_scores():
    split = Split(
        name="test",
        captions=["a puppy on grass", "a red car", "the dog and the dog", "nothing here"],
        captions_per_image=1,
        global_feats=np.zeros((4, 2), dtype=np.float32),
        extras={
            "tags": [
                [["dog", 0.9], ["animal", 0.5], ["dog", 0.4]],  # a repeated tag keeps its best score
                [["car", 0.8], ["vehicle", 0.25]],
                [["grass", 0.3]],
                [],
            ],
            "tag_expansion": {"puppy": ["dog", "animal"], "car": ["vehicle"]},
        },
    )
    data = RetrievalData(name="hand", fingerprint="h", loaders={"train": lambda: split, "test": lambda: split})
    expected = np.array(
        [
            # puppy->dog+animal, grass   red car->car+vehicle   dog (k-hot: once)   nothing
            [1.4, 0.0, 0.9, 0.0],
            [0.0, 1.05, 0.0, 0.0],
            [0.3, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(model_scores(data, "test"), expected, atol=1e-6)


def test_tag_index_is_per_split():
    # a tag that no training image carries still scores on the test split
    data = tagged_data(0)
    test = data.split("test")
    test.extras["tags"] = [list(t) for t in test.extras["tags"]]
    test.extras["tags"][0].append(["zebra", 0.7])
    test.captions[0] = "a zebra"
    scores = model_scores(data, "test")
    assert scores[0, 0] == pytest.approx(0.7, abs=1e-6)
    np.testing.assert_allclose(scores, naive_scores(test), atol=1e-6)


def test_data_contract_errors():
    untagged = toy_split("train", 10, 1)
    data = RetrievalData(name="plain", fingerprint="p", loaders={"train": lambda: untagged})
    with pytest.raises(DataError, match="no image tags"):
        PreparedData(data, DataConfig(), "tags", "tags").split("train")
    with pytest.raises(DataError, match="together"):
        PreparedData(tagged_data(), DataConfig(), "tags", "tokens")
    with pytest.raises(DataError, match="together"):
        PreparedData(tagged_data(), DataConfig(), "global", "tags")


def test_engine_runs_it_without_training():
    raw = {
        "model": {"name": "sg_baseline"},
        "loss": None,
        "eval": {"protocols": ["test", "testall_5fold"], "dev_images": 10},
    }
    cfg = validate_cell_config(raw, where="test")
    data = tagged_data(0)
    prepared = PreparedData(data, cfg.data, "tags", "tags")
    out = train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))
    assert out.n_params == 0 and out.best_epoch == 0
    assert len(out.ranks["test"]["t2i"]) == 100 and len(out.ranks["testall_5fold"]["i2t"]) == 100
    # the same ranks as the naive scores give (ties against the positive, as the metrics do)
    naive = torch.from_numpy(naive_scores(data.split("test"))).float()
    assert out.metrics["test"] == pytest.approx(retrieval_metrics(naive, captions_per_image=5))
    assert set(out.metrics["dev"]) == set(out.metrics["test"])


def test_sg_baseline_is_closed_form():
    with pytest.raises(ConfigError, match="loss: null"):
        validate_cell_config({"model": {"name": "sg_baseline"}, "loss": {"name": "hardest_negative"}}, where="t")
    with pytest.raises(ConfigError):
        validate_cell_config({"model": {"name": "sg_baseline", "image_input": "global"}, "loss": None}, where="t")
    model = SGBaseline(SGBaseline.Params(), InputDims(image_dim=3, vocab_size=0, text_dim=3))
    assert list(model.parameters()) == []
