"""Tests of vocabulary files (xmrbench/data/vocab_file.py) and ``data.vocab_file``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmrbench.config import DataConfig
from xmrbench.core.text.vocab import SPECIALS, Vocabulary
from xmrbench.data.registry import DATASETS
from xmrbench.data.vocab_file import (
    ADAPT_SPECIALS,
    caption_coverage,
    load_vocab_file,
    resolve_vocab_path,
    vocab_from_words,
    write_vocab_file,
)
from xmrbench.engine.inputs import PreparedData
from xmrbench.errors import DataError

WORDS = ["a", "dog", "runs", "on", "the", "beach"]


def _scan_json(words: list[str]) -> dict:
    return {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": {str(i): w for i, w in enumerate(words)},
            "idx": len(words)}


@pytest.mark.parametrize("order", ["scan", "adapt"])
def test_write_then_load_gives_our_vocabulary(tmp_path, order):
    vocab = Vocabulary([*SPECIALS, *WORDS])
    path = write_vocab_file(vocab, tmp_path / "v.json", order=order)
    raw = json.loads(path.read_text())
    assert [raw["idx2word"][str(i)] for i in range(4)] == list(SPECIALS if order == "scan" else ADAPT_SPECIALS)
    got = load_vocab_file(path)
    assert got.order == order and got.vocab.idx2word == vocab.idx2word and got.words == len(WORDS)
    # regular words keep their index in both peer orders
    for w in WORDS:
        assert got.file_to_ours[raw["word2idx"][w]] == vocab.word2idx[w] == raw["word2idx"][w]


def test_adapt_order_maps_specials_onto_ours(tmp_path):
    path = tmp_path / "adapt.json"
    path.write_text(json.dumps(_scan_json([*ADAPT_SPECIALS, *WORDS])))
    got = load_vocab_file(path)
    assert got.order == "adapt"
    np.testing.assert_array_equal(got.file_to_ours[:4], [0, 3, 1, 2])  # pad, unk, start, end -> ours
    # a sentence encoded with the file's ids decodes to the same words through the map
    file_ids = [2, 4 + WORDS.index("dog"), 1, 3]  # <start> dog <unk> <end>, in ADAPT ids
    ours = got.file_to_ours[file_ids]
    assert [got.vocab.idx2word[i] for i in ours] == ["<start>", "dog", "<unk>", "<end>"]


def test_word_list_and_other_orders(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(["dog", "<unk>", "cat", "<pad>", "<end>", "<start>"]))
    got = load_vocab_file(path)
    assert got.order == "other" and got.vocab.idx2word == [*SPECIALS, "dog", "cat"]
    np.testing.assert_array_equal(got.file_to_ours, [4, 3, 5, 0, 2, 1])


def test_random_permutations_round_trip_through_the_map():
    rng = np.random.default_rng(0)
    for _ in range(20):
        words = [*SPECIALS, *[f"w{i}" for i in range(int(rng.integers(0, 12)))]]
        shuffled = [words[i] for i in rng.permutation(len(words))]
        vocab, _, file_to_ours = vocab_from_words(shuffled)
        for file_id, word in enumerate(shuffled):  # naive check: every word lands on itself
            assert vocab.idx2word[file_to_ours[file_id]] == word
        assert vocab.idx2word[:4] == list(SPECIALS)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 5},
          "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", "4": "dog"}, "idx": 5},
         "disagree"),
        ({**_scan_json([*SPECIALS, "dog"]), "idx": 9}, "idx is 9"),
        (_scan_json(["<pad>", "<start>", "<end>", "dog"]), "<unk>"),
        (["<pad>", "<start>", "<end>", "<unk>", "dog", "dog"], "twice"),
        ({"words": []}, "not a vocabulary"),
        ({"idx2word": {"0": "<pad>", "2": "<start>"}}, "skips index 1"),
    ],
)
def test_malformed_vocabulary_files(tmp_path, doc, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError) as info:
        load_vocab_file(path)
    assert needle in str(info.value) and "bad.json" in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_vocab_file(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        load_vocab_file(tmp_path / "broken.json")


def test_coverage_and_path_resolution(tmp_path):
    vocab = Vocabulary([*SPECIALS, "dog", "cat"])
    assert caption_coverage(vocab, ["a dog", "the cat"]) == 0.5
    assert caption_coverage(vocab, []) == 1.0
    (tmp_path / "v.json").write_text("{}")
    assert resolve_vocab_path("v.json", str(tmp_path)) == tmp_path / "v.json"
    assert resolve_vocab_path("elsewhere.json", str(tmp_path)).name == "elsewhere.json"
    assert resolve_vocab_path(str(tmp_path / "v.json"), None) == tmp_path / "v.json"


def test_data_vocab_file_replaces_the_built_vocabulary(tmp_path):
    cfg = DataConfig(size="tiny")
    data = DATASETS["synthetic"](cfg)
    built = PreparedData(data, cfg, "global", "tokens").vocab
    # a user's vocabulary in ADAPT order with a different word order and an extra word
    words = [*ADAPT_SPECIALS, "zebra", *reversed(built.idx2word[4:])]
    path = tmp_path / "user_vocab.json"
    path.write_text(json.dumps(_scan_json(words)))
    cfg_file = DataConfig(size="tiny", vocab_file=str(path))
    prepared = PreparedData(data, cfg_file, "global", "tokens")
    assert prepared.vocab.idx2word == [*SPECIALS, "zebra", *reversed(built.idx2word[4:])]
    assert prepared.dims.vocab_size == len(built) + 1
    batch = prepared.split("test").text_batch(np.array([0]))
    caption = data.split("test").captions[0]
    decoded = [prepared.vocab.idx2word[int(t)] for t in batch.tokens[0, 1 : int(batch.lengths[0]) - 1]]
    assert decoded == caption.split()
    missing = DataConfig(size="tiny", vocab_file=str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="nope.json"):
        PreparedData(data, missing, "global", "tokens")
