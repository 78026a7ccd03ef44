"""Tokenizer, vocabulary (SCAN json format) and tf-idf features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmrbench.core.text.tfidf import TfidfFeaturizer
from xmrbench.core.text.vocab import SPECIALS, Vocabulary, tokenize
from xmrbench.errors import DataError

TEXTS = ["A white dog, next to a RED car.", "a dog runs", "two cats on a red sofa", "a dog"]


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A white dog, next to a RED car.") == ["a", "white", "dog", "next", "to", "a", "red", "car"]
    assert tokenize("") == []


def test_vocabulary_specials_first_and_min_count():
    vocab = Vocabulary.build(TEXTS, min_count=2)
    assert vocab.idx2word[:4] == list(SPECIALS) == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.idx2word[4:] == ["a", "dog", "red"]  # counts 5, 3, 2
    assert "cats" not in vocab


def test_encode_with_unknown_words_and_max_len():
    vocab = Vocabulary.build(TEXTS, min_count=2)
    ids = vocab.encode("a purple dog", max_len=2)
    assert ids == [1, vocab.word2idx["a"], 3, 2]
    tokens, lengths = vocab.encode_batch(["a dog", "red"])
    assert tokens.shape == (2, 4) and lengths.tolist() == [4, 3] and tokens[1, 3] == 0


def test_scan_json_roundtrip(tmp_path):
    vocab = Vocabulary.build(TEXTS)
    data = vocab.to_json()
    assert set(data) == {"word2idx", "idx2word", "idx"} and data["idx"] == len(vocab)
    vocab.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert again.idx2word == vocab.idx2word
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(DataError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(DataError):
        Vocabulary(["a", "b"])


def test_tfidf_rows_are_unit_norm_and_fit_on_train_only():
    vocab = Vocabulary.build(TEXTS[:3])
    feat = TfidfFeaturizer(vocab, TEXTS[:3])
    x = feat.transform(["a dog", "a sofa sofa", "unseen words only"]).toarray()
    assert x.shape == (3, len(vocab))
    assert np.allclose(np.linalg.norm(x[:2], axis=1), 1.0)
    assert np.allclose(x[2], 0.0)
    # "a" occurs in every training text: lowest idf, so "dog" outweighs it
    assert x[0, vocab.word2idx["dog"]] > x[0, vocab.word2idx["a"]]
