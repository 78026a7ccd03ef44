"""Sentence vectors pooled from word vectors (docs/text_features.md): the mean vector and
Fisher vectors under a diagonal Gaussian mixture, the ``mean_wordvec`` / ``fisher`` text
inputs of PreparedData and the CCA model, and the two-branch paper's mean-vector and
Fisher-vector rows end to end on the tiny synthetic world."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xmrbench.config import DataConfig
from xmrbench.core.models.cca import CCA
from xmrbench.core.text.vocab import Vocabulary
from xmrbench.core.text.word_features import (
    FisherSpec,
    FisherVectorEncoder,
    MeanWordVector,
    parse_fisher_kind,
)
from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.data.wordvec import write_word_vectors
from xmrbench.engine.inputs import PreparedData
from xmrbench.errors import DataError
from xmrbench.gate.chance import chance_rsum
from xmrbench.recipe.resolve import resolve

from support import cli

WORDS = [f"w{i}" for i in range(24)]
NO_VECTOR = "nov"  # a vocabulary word the word-vector file lacks


def _vectors(dim: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # four clusters of six words, so a four-centre mixture has something to find
    centres = rng.normal(0, 3, size=(4, dim))
    return np.concatenate([centres[i // 6] + rng.normal(0, 1, size=dim) for i in range(len(WORDS))]).reshape(-1, dim)


def _captions(n: int, seed: int, words=WORDS) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(3, 8))) for _ in range(n)]


def _vocab_and_vectors(dim: int = 3):
    vocab = Vocabulary.build(WORDS + [NO_VECTOR])
    vecs = _vectors(dim)
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    known = np.zeros(len(vocab), dtype=bool)
    for word, vec in zip(WORDS, vecs):
        matrix[vocab.word2idx[word]] = vec
        known[vocab.word2idx[word]] = True
    return vocab, matrix, known, {w: matrix[vocab.word2idx[w]].astype(np.float64) for w in WORDS}


# ---------------------------------------------------------------------------------
# the encodings against direct computations


def test_mean_vector_is_the_average_of_the_captions_word_vectors_skipping_words_without_one():
    vocab, matrix, known, table = _vocab_and_vectors()
    enc = MeanWordVector(vocab, matrix, known)
    texts = ["w1 w2 w2", f"w3 {NO_VECTOR} unseen w5", f"{NO_VECTOR} unseen", ""]
    out = enc.transform(texts)
    assert out.shape == (4, 3) and out.dtype == np.float32 and enc.dim == 3
    np.testing.assert_allclose(out[0], (table["w1"] + 2 * table["w2"]) / 3, rtol=1e-5)
    # a vocabulary word without a vector and a word outside the vocabulary are skipped
    np.testing.assert_allclose(out[1], (table["w3"] + table["w5"]) / 2, rtol=1e-5)
    # no word with a vector: the zero vector
    np.testing.assert_array_equal(out[2], 0.0)
    np.testing.assert_array_equal(out[3], 0.0)


def _direct_fisher(enc: FisherVectorEncoder, text: str, table: dict[str, np.ndarray]) -> np.ndarray:
    """The improved Fisher vector of one caption by explicit loops over words, centres and dimensions."""
    words = [w for w in text.split() if w in table]
    x = np.array([table[w] for w in words], dtype=np.float64).reshape(len(words), len(table["w0"]))
    if enc.ica is not None and len(words):
        x = enc.ica.transform(x)
    gmm = enc.gmm
    k_count, dim = gmm.means_.shape
    g_mu = np.zeros((k_count, dim))
    g_sigma = np.zeros((k_count, dim))
    if len(words):
        gamma = gmm.predict_proba(x)
        n = len(words)
        for k in range(k_count):
            w_k = gmm.weights_[k]
            for d in range(dim):
                mu, sigma = gmm.means_[k, d], math.sqrt(gmm.covariances_[k, d])
                for t in range(n):
                    u = (x[t, d] - mu) / sigma
                    g_mu[k, d] += gamma[t, k] * u
                    g_sigma[k, d] += gamma[t, k] * (u * u - 1.0)
                g_mu[k, d] /= n * math.sqrt(w_k)
                g_sigma[k, d] /= n * math.sqrt(2 * w_k)
    fv = np.concatenate([g_mu.ravel(), g_sigma.ravel()])
    fv = np.sign(fv) * np.sqrt(np.abs(fv))
    norm = np.linalg.norm(fv)
    return fv / norm if norm > 0 else fv


@pytest.mark.parametrize("ica", [False, True])
def test_fisher_vectors_equal_the_gradients_computed_from_the_mixtures_posteriors(ica):
    vocab, matrix, known, table = _vocab_and_vectors()
    train = _captions(60, seed=1)
    enc = FisherVectorEncoder(vocab, matrix, known, train, FisherSpec(centres=4, pca=None, ica=ica))
    assert (enc.ica is not None) == ica and enc.gmm.covariance_type == "diag"
    texts = ["w0 w7 w13", f"w2 w2 {NO_VECTOR} w20 unseen w9", "w23", f"{NO_VECTOR} unseen", *_captions(5, seed=2)]
    out = enc.fisher_vectors(texts)
    assert out.shape == (len(texts), 2 * 4 * 3) and enc.dim == enc.fisher_dim == 24
    for row, text in zip(out, texts):
        np.testing.assert_allclose(row, _direct_fisher(enc, text, table), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, rtol=1e-5)  # L2-normalised
    np.testing.assert_array_equal(out[3], 0.0)  # no word with a vector
    assert np.array_equal(enc.transform(texts), out)  # pca=None: the Fisher vectors themselves


def test_pca_projects_the_fisher_vectors_to_the_stated_dimension():
    vocab, matrix, known, _ = _vocab_and_vectors()
    train = _captions(60, seed=1)
    enc = FisherVectorEncoder(vocab, matrix, known, train, FisherSpec(centres=4, pca=10, ica=True))
    texts = _captions(7, seed=3)
    out = enc.transform(texts)
    assert out.shape == (7, 10) and enc.dim == 10
    np.testing.assert_allclose(out, enc.pca.transform(enc.fisher_vectors(texts)), rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match="lower pca"):
        FisherVectorEncoder(vocab, matrix, known, train, FisherSpec(centres=4, pca=25, ica=False))


def test_the_encoding_is_deterministic():
    vocab, matrix, known, _ = _vocab_and_vectors()
    train, texts = _captions(60, seed=1), _captions(9, seed=4)
    a = FisherVectorEncoder(vocab, matrix, known, train, FisherSpec(centres=4, pca=8)).transform(texts)
    b = FisherVectorEncoder(vocab, matrix, known, train, FisherSpec(centres=4, pca=8)).transform(texts)
    np.testing.assert_array_equal(a, b)


def test_fisher_kind_options_parse_and_bad_ones_are_rejected():
    assert parse_fisher_kind("fisher") == FisherSpec(centres=30, pca=6000, ica=True)
    assert parse_fisher_kind("fisher:k=8,pca=none,ica=off") == FisherSpec(centres=8, pca=None, ica=False)
    assert parse_fisher_kind("fisher:pca=256") == FisherSpec(pca=256)
    for bad in ("fisher:k=0", "fisher:k=x", "fisher:ica=yes", "fisher:pcs=3", "fisher:k=3,k=4", "fisher:"):
        with pytest.raises(ValueError):
            parse_fisher_kind(bad)
    assert CCA.Params(text_input="fisher:k=30,pca=256,ica=on").text_input == "fisher:k=30,pca=256,ica=on"
    assert CCA.Params(text_input="mean_wordvec").text_input == "mean_wordvec"
    for bad in ("fisher:k=none", "tfidf:k=3", "mean"):
        with pytest.raises(ValueError):
            CCA.Params(text_input=bad)


# ---------------------------------------------------------------------------------
# PreparedData: fitted on the training captions only


def _dataset(test_captions: list[str], train_captions: list[str] | None = None) -> RetrievalData:
    rng = np.random.default_rng(5)
    train = train_captions or _captions(40 * 5, seed=6)

    def split(name: str, captions: list[str]) -> Split:
        return Split(name=name, captions=captions, captions_per_image=5,
                     global_feats=rng.normal(size=(len(captions) // 5, 16)).astype(np.float32))

    return RetrievalData(name="toy", fingerprint="toy", loaders={"train": lambda: split("train", train),
                                                                 "test": lambda: split("test", test_captions)})


def _prepared(tmp_path, kind: str, data: RetrievalData) -> PreparedData:
    path = tmp_path / "vectors.txt"
    if not path.exists():
        write_word_vectors(path, WORDS, _vectors(4, seed=7))
    return PreparedData(data, DataConfig(name="synthetic", word_vectors=str(path)), "global", kind)


def test_fitting_uses_the_training_captions_only(tmp_path):
    kind = "fisher:k=4,pca=12,ica=on"
    first = _prepared(tmp_path, kind, _dataset(_captions(50, seed=8)))
    # other test captions, words the training captions never use among them: the same fit
    other = _prepared(tmp_path, kind, _dataset(_captions(50, seed=9, words=WORDS[:5]) + ["zebra"] * 5))
    a, b = first.sentence_encoder, other.sentence_encoder
    for attr in ("means_", "covariances_", "weights_"):
        np.testing.assert_array_equal(getattr(a.gmm, attr), getattr(b.gmm, attr))
    np.testing.assert_array_equal(a.ica.components_, b.ica.components_)
    np.testing.assert_array_equal(a.pca.components_, b.pca.components_)
    # while other training captions change it
    moved = _prepared(tmp_path, kind, _dataset(_captions(50, seed=8), train_captions=_captions(200, seed=10)))
    assert not np.array_equal(a.gmm.means_, moved.sentence_encoder.gmm.means_)
    # the split's text vectors are the encoder's, and the input dims follow
    test = first.split("test")
    np.testing.assert_array_equal(test.text_batch(np.arange(3)).vectors.numpy(),
                                  a.transform(test.split.captions[:3]))
    assert first.dims.text_dim == 12
    assert first.word_vectors() is None  # pooled into the sentence vectors: no token embedding reads them
    np.testing.assert_array_equal(test.strings_batch(["w1 w2"]).vectors.numpy(), a.transform(["w1 w2"]))


def test_mean_wordvec_input_reads_the_word_vector_file(tmp_path):
    prepared = _prepared(tmp_path, "mean_wordvec", _dataset(["w1 w3", "w2", "w4 zebra", "zebra", "w5"]))
    vecs = dict(zip(WORDS, _vectors(4, seed=7).round(4)))  # the file keeps 4 decimals
    got = prepared.split("test").text_batch(np.arange(5)).vectors.numpy()
    np.testing.assert_allclose(got[0], (vecs["w1"] + vecs["w3"]) / 2, rtol=1e-5)
    np.testing.assert_allclose(got[2], vecs["w4"], rtol=1e-5)
    np.testing.assert_array_equal(got[3], 0.0)
    assert prepared.dims.text_dim == 4


def test_word_feature_inputs_need_word_vectors():
    with pytest.raises(DataError, match="data.word_vectors"):
        PreparedData(_dataset(_captions(10, seed=1)), DataConfig(name="synthetic"), "global", "mean_wordvec")


# ---------------------------------------------------------------------------------
# the recipes


ROWS = {"two-branch-table2": ("mean-vector", "cca-fv-gmm-hglmm-2"), "two-branch-table3": ("mean-vector", "cca-fv-2b")}


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_the_rows_resolve_to_cca_on_word_vector_features(profile):
    for rid, (mean_row, fv_row) in ROWS.items():
        resolved = resolve(rid, profile=profile, require_data=False)
        runnable = {c.id for c in resolved.runnable_cells()}
        assert {mean_row, fv_row} <= runnable
        mean, fv = resolved.cell(mean_row).config, resolved.cell(fv_row).config
        assert mean.model.name == fv.model.name == "cca" and mean.loss is None and fv.loss is None
        assert mean.model.params.text_input == "mean_wordvec"
        expected = "fisher:k=30,pca=6000,ica=on" if profile == "full" else "fisher:k=30,pca=256,ica=on"
        assert fv.model.params.text_input == expected
        vectors = "GoogleNews-vectors-negative300.txt" if profile == "full" else "synthetic:64"
        assert mean.data.word_vectors == fv.data.word_vectors == vectors
    table2 = resolve("two-branch-table2", profile=profile, require_data=False)
    assert "cca-fv-hglmm-2" not in {c.id for c in table2.runnable_cells()}
    (hglmm,) = [row for row in table2.recipe.rows if row.id == "cca-fv-hglmm-2"]
    assert not hglmm.run and "HGLMM Fisher vectors are not implemented" in hglmm.pending


@pytest.mark.slow
@pytest.mark.parametrize("rid", sorted(ROWS))
def test_the_smoke_rows_learn_above_chance(rid, tmp_path, capsys):
    """Seed 0 of the smoke profile (closed form: every seed gives the same numbers).
    Measured on the tiny world: table 2 mean vector 331.8, GMM Fisher vectors 325.4; chance 31.6."""
    code, out, err = cli(["reproduce", rid, "--profile", "smoke", "--seeds", "0", "--rows", ",".join(ROWS[rid]),
                          "--results", str(tmp_path), "--quiet", "--threads", "1"], capsys)
    assert code == 0, err
    for row in ROWS[rid]:
        (path,) = (tmp_path / rid).glob(f"{row}--*.json")
        doc = json.loads(path.read_text())
        assert doc["config"]["loss"] is None
        assert doc["metrics"]["test"]["rsum"] > 2.5 * chance_rsum(100, 5), (row, doc["metrics"]["test"]["rsum"])
