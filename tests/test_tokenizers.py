"""The peers' tokenizer as an option: punctuation kept, the default untouched."""

from __future__ import annotations

import pytest
import torch

from xmrbench.core.text.vocab import Vocabulary, tokenize
from xmrbench.engine.inputs import PreparedData
from xmrbench.errors import DataError
from xmrbench.recipe.config import validate_cell_config

from toy import toy_data

CAPTION = "Two dogs aren't chasing a red ball ."


def test_treebank_keeps_punctuation_and_splits_contractions():
    assert tokenize(CAPTION) == ["two", "dogs", "aren't", "chasing", "a", "red", "ball"]
    assert tokenize(CAPTION, "treebank") == ["two", "dogs", "are", "n't", "chasing", "a", "red", "ball", "."]
    assert tokenize("A dog, running.", "treebank") == ["a", "dog", ",", "running", "."]
    with pytest.raises(DataError, match="unknown tokenizer"):
        tokenize(CAPTION, "nope")


def test_a_vocabulary_encodes_with_the_tokenizer_it_was_built_with():
    vocab = Vocabulary.build([CAPTION, "a dog ."], tokenizer="treebank")
    assert "." in vocab and "n't" in vocab and vocab.tokenizer == "treebank"
    ids = vocab.encode("a dog .")
    assert [vocab.idx2word[i] for i in ids] == ["<start>", "a", "dog", ".", "<end>"]
    assert "." not in Vocabulary.build([CAPTION])


def test_the_data_key_reaches_the_vocabulary_and_leaves_default_hashes_alone():
    raw = {"model": {"name": "vsepp"}, "loss": {"name": "hardest_negative"}}
    plain = validate_cell_config(raw, where="t")
    peers = validate_cell_config({**raw, "data": {"tokenizer": "treebank"}}, where="t")
    assert "tokenizer" not in plain.to_dict()["data"] and plain.hash() != peers.hash()
    prepared = PreparedData(toy_data(), peers.data, "global", "tokens")
    assert prepared.vocab.tokenizer == "treebank" and "tokenizer treebank" in prepared.vocabulary
    batch = prepared.split("train").text_batch([0])
    assert batch.tokens.shape[0] == 1 and isinstance(batch.tokens, torch.Tensor)
    assert "tokenizer" not in PreparedData(toy_data(), plain.data, "global", "tokens").vocabulary
