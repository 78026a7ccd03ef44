"""Registered readers beyond precomp: pretrained word vectors initialise a model's
token embedding; the entities layout is a dataset kind with the phrase protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.data.entities import write_entities
from xmrbench.data.registry import DATASETS
from xmrbench.data.synthetic.entities import load_synthetic_entities
from xmrbench.data.wordvec import write_word_vectors
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.train import train_and_evaluate
from xmrbench.errors import ConfigError, TrainingError
from xmrbench.recipe.config import validate_cell_config

from toy import WORDS, toy_data

VSEPP = {"model": {"name": "vsepp", "embed_dim": 16, "word_dim": 4}, "loss": {"name": "hardest_negative"},
         "train": {"epochs": 0, "batch_size": 40}}


def _vectors(tmp_path, dim=4):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(WORDS), dim)).astype(np.float32).round(4)
    path = write_word_vectors(tmp_path / "vectors.txt", list(WORDS), vecs)
    return path, dict(zip(WORDS, vecs))


def _run(raw, data=None):
    cfg = validate_cell_config(raw, where="test")
    prepared = PreparedData(data or toy_data(), cfg.data, "global", "tokens")
    return train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu")), prepared


def test_word_vectors_initialise_the_token_embedding(tmp_path):
    path, vecs = _vectors(tmp_path)
    out, prepared = _run({**VSEPP, "data": {"word_vectors": str(path)}})
    weight = out.state_dict["txt_enc.embed.weight"]  # epochs 0: the initial model
    for word, vec in vecs.items():
        np.testing.assert_allclose(weight[prepared.vocab.word2idx[word]].numpy(), vec, rtol=0, atol=1e-6)
    assert torch.equal(weight[0], torch.zeros(4))  # <pad>
    plain, _ = _run(VSEPP)
    assert not torch.equal(plain.state_dict["txt_enc.embed.weight"], weight)
    assert "word vectors vectors.txt, sha256" in prepared.vocabulary


def test_the_hash_changes_only_when_word_vectors_are_set(tmp_path):
    a = validate_cell_config(VSEPP, where="t")
    b = validate_cell_config({**VSEPP, "data": {"word_vectors": "v.txt"}}, where="t")
    assert "word_vectors" not in a.to_dict()["data"] and a.hash() != b.hash()


def test_word_vectors_that_do_not_fit_are_one_line_errors(tmp_path):
    path, _ = _vectors(tmp_path, dim=3)
    with pytest.raises(TrainingError, match=r"set model.word_dim to 3"):
        _run({**VSEPP, "data": {"word_vectors": str(path)}})
    (tmp_path / "ok").mkdir()
    path, _ = _vectors(tmp_path / "ok")
    raw = {"data": {"word_vectors": str(path)}, "model": {"name": "two_branch_embedding", "hidden_dim": 8,
           "embed_dim": 4}, "loss": {"name": "bidirectional_ranking"}, "train": {"epochs": 0}}
    cfg = validate_cell_config(raw, where="t")
    prepared = PreparedData(toy_data(), cfg.data, "global", "tfidf")
    with pytest.raises(TrainingError, match="has no token embedding"):
        train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="word_vectors: not a key of dataset kind 'labelled'"):
        validate_cell_config({**VSEPP, "data": {"name": "labelled", "root": "x", "word_vectors": "v"}}, where="t")


def test_entities_is_a_registered_dataset_kind(tmp_path):
    root = tmp_path / "ents"
    write_entities(root, load_synthetic_entities(size="tiny"))
    cfg = validate_cell_config({"data": {"name": "entities", "root": str(root)},
                                "model": {"name": "two_branch_embedding", "hidden_dim": 16, "embed_dim": 8},
                                "loss": {"name": "bidirectional_ranking"}, "train": {"epochs": 1, "batch_size": 200},
                                "eval": {"protocols": ["test", "test_phrases"], "dev_images": 50}}, where="t")
    data = DATASETS["entities"](cfg.data)
    out = train_and_evaluate(cfg, 0, PreparedData(data, cfg.data, "global", "tfidf"), device=torch.device("cpu"))
    assert set(out.metrics) == {"test", "test_phrases", "dev"}
    assert 0 <= out.metrics["test_phrases"]["pl_r1"] <= out.metrics["test_phrases"]["pl_upper"] <= 100
    with pytest.raises(ConfigError, match="size: not a key of dataset kind 'entities'"):
        validate_cell_config({"data": {"name": "entities", "size": "tiny"}, "model": {"name": "vsepp"},
                              "loss": {"name": "hardest_negative"}}, where="t")
