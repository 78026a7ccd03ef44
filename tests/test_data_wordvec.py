"""Tests of GloVe / word2vec text files (xmrbench/data/wordvec.py) and the synthetic GloVe."""

from __future__ import annotations

import numpy as np
import pytest

from xmrbench.core.text.vocab import SPECIALS, Vocabulary
from xmrbench.data.wordvec import align_to_vocab, read_word_vectors, write_word_vectors
from xmrbench.errors import DataError


@pytest.mark.parametrize("header", [False, True])
def test_round_trip(tmp_path, header):
    rng = np.random.default_rng(0)
    words = ["the", "dog", "ran", "é"]
    vecs = np.round(rng.standard_normal((4, 5)), 4).astype(np.float32)
    path = write_word_vectors(tmp_path / "v.txt", words, vecs, header=header)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert (first == "4 5") == header
    got = read_word_vectors(path)
    assert got.words == words and got.dim == 5 and len(got) == 4 and "dog" in got
    np.testing.assert_array_equal(got.vectors, vecs)
    np.testing.assert_array_equal(got.vector("ran"), vecs[2])


def test_glove_lines_with_spaces_in_the_word_and_duplicates(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("a 1 2\n. . . 3 4\nb 5 6\na 7 8\n", encoding="utf-8")
    got = read_word_vectors(path)
    assert got.words == ["a", ". . .", "b"] and got.duplicates == 1
    np.testing.assert_array_equal(got.vector(". . ."), [3, 4])
    np.testing.assert_array_equal(got.vector("a"), [1, 2])  # the first one is kept


def test_word_filter_and_max_words(tmp_path):
    path = write_word_vectors(tmp_path / "v.txt", ["a", "b", "c", "d"], np.eye(4, dtype=np.float32))
    assert read_word_vectors(path, words={"c", "a", "zz"}).words == ["a", "c"]
    assert read_word_vectors(path, max_words=2).words == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a 1 2 3\nb 1 2\n", "line 2: 2 values, expected 3"),
        ("a 1 2\nb 1 x\n", "line 2: 'x' is not a number"),
        ("a 1 nan\n", "line 1: the vector of 'a' holds NaN or inf"),
        ("3 2\na 1 2\nb 1 2\n", "announces 3 words but the file holds 2"),
        ("", "no word vectors"),
        ("a\n", "a word without a vector"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, text, needle):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_word_vectors(path)
    assert needle in str(info.value) and "bad.txt" in str(info.value)


def test_not_utf8_and_missing(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"a 1 2\n\xff\xfe 1 2\n")
    with pytest.raises(DataError, match="UTF-8"):
        read_word_vectors(tmp_path / "b.txt")
    with pytest.raises(DataError, match="cannot open"):
        read_word_vectors(tmp_path / "none.txt")


def test_align_to_vocabulary(tmp_path):
    rng = np.random.default_rng(1)
    vocab = Vocabulary([*SPECIALS, "dog", "cat", "zebra", "run"])
    vecs = rng.standard_normal((4, 6)).astype(np.float32) * 3
    path = write_word_vectors(tmp_path / "v.txt", ["dog", "Cat", "run", "other"], vecs, decimals=6)
    wv = read_word_vectors(path)
    matrix, report = align_to_vocab(wv, vocab, seed=7)
    assert matrix.shape == (8, 6) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix[vocab.word2idx["dog"]], wv.vector("dog"))
    np.testing.assert_allclose(matrix[vocab.word2idx["run"]], wv.vector("run"))
    assert (report.found, report.total, report.missing) == (2, 4, ["cat", "zebra"])  # "Cat" differs in case
    assert report.coverage == 0.5
    np.testing.assert_array_equal(matrix[0], 0.0)  # <pad>
    # unknown words: N(0, s^2) with s the std of the found vectors' values, seeded
    found = np.stack([wv.vector("dog"), wv.vector("run")])
    assert report.init_std == pytest.approx(float(found.std()))
    again, _ = align_to_vocab(wv, vocab, seed=7)
    np.testing.assert_array_equal(again, matrix)
    other, _ = align_to_vocab(wv, vocab, seed=8)
    assert not np.array_equal(other[vocab.word2idx["zebra"]], matrix[vocab.word2idx["zebra"]])
    zeros, _ = align_to_vocab(wv, vocab, init="zeros")
    np.testing.assert_array_equal(zeros[vocab.word2idx["zebra"]], 0.0)
    with pytest.raises(DataError, match="unknown init"):
        align_to_vocab(wv, vocab, init="uniform")


def test_align_falls_back_to_lower_case(tmp_path):
    path = write_word_vectors(tmp_path / "v.txt", ["dog"], np.ones((1, 2), np.float32))
    vocab = Vocabulary([*SPECIALS, "Dog"])
    _, report = align_to_vocab(read_word_vectors(path), vocab)
    assert report.found == 1
    _, strict = align_to_vocab(read_word_vectors(path), vocab, lowercase=False)
    assert strict.found == 0


def test_init_std_is_that_of_the_found_vectors_on_random_inputs():
    rng = np.random.default_rng(2)
    from xmrbench.data.wordvec import WordVectors

    for _ in range(5):
        scale = float(rng.uniform(0.1, 5.0))
        n = 200
        wv = WordVectors(words=[f"w{i}" for i in range(n)], vectors=(rng.standard_normal((n, 20)) * scale).astype(
            np.float32))
        vocab = Vocabulary([*SPECIALS, *[f"w{i}" for i in range(n)], *[f"u{i}" for i in range(300)]])
        matrix, report = align_to_vocab(wv, vocab, seed=0)
        unknown = matrix[4 + n :]
        assert report.coverage == pytest.approx(n / (n + 300))
        assert unknown.std() == pytest.approx(scale, rel=0.05)


# ---------------------------------------------------------------------------------
# The synthetic GloVe
# ---------------------------------------------------------------------------------


def _cos(wv, a: str, b: str) -> float:
    x, y = wv.vector(a), wv.vector(b)
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.fixture(scope="module")
def glove():
    from xmrbench.data.synthetic.wordvec import load_synthetic_word_vectors

    return load_synthetic_word_vectors(seed=0, dim=50)


def test_synthetic_glove_is_a_glove_file(glove):
    wv, path = glove
    assert path.name == "vectors.txt" and wv.dim == 50 and len(wv) > 500
    first = path.read_text(encoding="utf-8").splitlines()[0].split(" ")
    assert first[0] == "a" and len(first) == 51


def test_synthetic_glove_structure(glove):
    from xmrbench.data.synthetic import lexicon as lx

    wv, _ = glove
    synonyms, same_category, unrelated = [], [], []
    classes = [c for c in lx.CLASSES if all(n in wv for n in c.nouns)]
    for c in classes:
        if len(c.nouns) > 1:
            synonyms.append(_cos(wv, c.nouns[0], c.nouns[1]))
    for a in classes:
        for b in classes:
            if a.name < b.name:
                (same_category if a.category == b.category else unrelated).append(_cos(wv, a.nouns[0], b.nouns[0]))
    assert np.mean(synonyms) > 0.7
    assert np.mean(synonyms) > np.mean(same_category) + 0.2
    assert np.mean(same_category) > np.mean(unrelated) + 0.3
    # detector and tag words sit at what they name
    for a, b in (("player", "person"), ("rock", "stone"), ("dog", "canine")):
        if a in wv and b in wv:
            assert _cos(wv, a, b) > 0.6


def test_synthetic_glove_covers_most_of_the_caption_vocabulary(glove):
    from xmrbench.data.synthetic.world import generate_world

    wv, _ = glove
    train = generate_world(size="tiny")["train"]
    vocab = Vocabulary.build(train.captions)
    _, report = align_to_vocab(wv, vocab)
    assert 0.85 < report.coverage < 1.0  # a few gaps, as with real vocabularies
