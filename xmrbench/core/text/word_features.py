"""Sentence vectors built from pretrained word vectors: the mean vector and Fisher vectors.

The text features of the two-branch paper's CCA baselines (Klein, Lev, Sadeh and Wolf,
CVPR 2015): a caption is the set of its words' vectors, pooled into one orderless
vector. Two text input kinds (``model.text_input``) read them; docs/text_features.md
gives the formulas.

- ``mean_wordvec``: the mean of the caption's word vectors.
- ``fisher`` or ``fisher:OPTIONS``: the Fisher vector of the caption's word vectors
  under a diagonal Gaussian mixture (gradients with respect to the means and the
  standard deviations, improved-FV normalisation), optionally after ICA of the word
  vectors and followed by PCA. OPTIONS, comma-separated, any subset in any order:
  ``k=INT`` (mixture centres, default 30), ``pca=INT`` or ``pca=none`` (PCA output
  dimension, default 6000, the paper's), ``ica=on|off`` (default on). Example:
  ``fisher:k=30,pca=256,ica=on``.

Words: a caption's words are tokenised like the tf-idf features (every token, no length
limit); a word outside the vocabulary or without a vector in ``data.word_vectors`` is
skipped. A caption none of whose words has a vector gets the zero vector (both kinds).

Fitting uses the training split only: ICA and the mixture are fitted on the distinct
words of the training captions that have a vector (each word once), PCA on the Fisher
vectors of the training captions (at most :data:`PCA_FIT_MAX` of them, drawn with the
seed). Every estimator gets ``random_state=seed`` (0 by default), so the features are a
deterministic function of the training data.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from xmrbench.core.text.vocab import Vocabulary
from xmrbench.errors import DataError

MEAN_KIND = "mean_wordvec"
FISHER_KIND = "fisher"
#: PCA is fitted on at most this many training captions' Fisher vectors (a seeded draw)
PCA_FIT_MAX = 25_000
_CHUNK = 4096  # captions encoded at a time (bounds the memory of the 2KD-dimensional vectors)


@dataclass(frozen=True)
class FisherSpec:
    """The options of a ``fisher`` text input kind."""

    centres: int = 30  # K, Gaussian components
    pca: int | None = 6000  # PCA output dimension; None: the 2KD-dimensional Fisher vectors as they are
    ica: bool = True  # FastICA of the word vectors before the mixture

    def describe(self) -> str:
        return f"fisher k={self.centres}, pca={self.pca or 'none'}, ica={'on' if self.ica else 'off'}"


def parse_fisher_kind(kind: str) -> FisherSpec:
    """``fisher`` or ``fisher:k=30,pca=256,ica=on`` -> :class:`FisherSpec`; ``ValueError`` otherwise."""
    base, sep, rest = kind.partition(":")
    if base != FISHER_KIND:
        raise ValueError(f"{kind!r} is not a Fisher-vector text input (write fisher or fisher:k=30,pca=256,ica=on)")
    values: dict[str, object] = {}
    seen: set[str] = set()
    for item in rest.split(",") if sep else ():
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in ("k", "pca", "ica") or key in seen:
            raise ValueError(f"text input {kind!r}: {item!r} is not one of k=INT, pca=INT|none, ica=on|off "
                             "(each at most once)")
        seen.add(key)
        if key == "ica":
            if value not in ("on", "off"):
                raise ValueError(f"text input {kind!r}: ica must be on or off, not {value!r}")
            values["ica"] = value == "on"
        elif key == "pca" and value == "none":
            values["pca"] = None
        else:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"text input {kind!r}: {key} must be a positive integer, not {value!r}")
            values["centres" if key == "k" else "pca"] = int(value)
    return FisherSpec(**values)  # type: ignore[arg-type]


def _check_fisher_kind(kind: str) -> str:
    parse_fisher_kind(kind)
    return kind


#: The type of a model's ``text_input`` value naming Fisher vectors (``fisher`` or ``fisher:OPTIONS``)
FisherKind = Annotated[str, AfterValidator(_check_fisher_kind)]


def is_word_feature_kind(kind: str) -> bool:
    return kind == MEAN_KIND or kind.partition(":")[0] == FISHER_KIND


class MeanWordVector:
    """The mean of a caption's word vectors, ``(n, D)`` float32.

    ``vectors (len(vocab), D)``: row i the vector of vocabulary word i; ``known (len(vocab),)``:
    whether word i has one. Words without a vector are skipped; a caption without any
    word that has one is the zero vector.
    """

    def __init__(self, vocab: Vocabulary, vectors: np.ndarray, known: np.ndarray):
        self.vocab = vocab
        self._known = np.asarray(known, dtype=bool)
        self._vectors = np.where(self._known[:, None], np.asarray(vectors, dtype=np.float64), 0.0)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        counts = self.vocab.counts_matrix(texts)
        total = np.asarray(counts @ self._known.astype(np.float64)).ravel()
        sums = np.asarray(counts @ self._vectors)
        return (sums / np.maximum(total, 1.0)[:, None]).astype(np.float32)


class FisherVectorEncoder:
    """Fisher vectors of captions' word vectors (Perronnin, Sanchez and Mensink's improved
    FV), fitted on the training captions; :meth:`transform` gives the PCA projections,
    :meth:`fisher_vectors` the normalised ``2KD``-dimensional vectors before PCA.

    Layout of a Fisher vector: ``[G_mu_1, ..., G_mu_K, G_sigma_1, ..., G_sigma_K]``, each
    block ``D`` long (``D`` the word vectors' size, or the ICA components').
    """

    def __init__(self, vocab: Vocabulary, vectors: np.ndarray, known: np.ndarray, train_texts: Sequence[str],
                 spec: FisherSpec = FisherSpec(), *, seed: int = 0):
        # imported here: scikit-learn takes seconds to import (see TfidfFeaturizer)
        from sklearn.decomposition import PCA, FastICA
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        self.vocab, self.spec = vocab, spec
        self._known = np.asarray(known, dtype=bool)
        vectors = np.asarray(vectors, dtype=np.float64)
        in_train = np.asarray(vocab.counts_matrix(train_texts).sum(axis=0)).ravel() > 0
        fit_words = vectors[self._known & in_train]
        if len(fit_words) < spec.centres:
            raise DataError(f"Fisher vectors with {spec.centres} centres need at least that many distinct training "
                            f"words with a word vector; the training captions have {len(fit_words)}")
        self.ica = None
        if spec.ica:
            self.ica = FastICA(n_components=min(vectors.shape[1], len(fit_words)), whiten="unit-variance",
                               max_iter=1000, tol=1e-3, random_state=seed)
            with warnings.catch_warnings():  # a slow ICA is still a rotation of whitened data: usable
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.ica.fit(fit_words)
            fit_words = self.ica.transform(fit_words)
        self.gmm = GaussianMixture(n_components=spec.centres, covariance_type="diag", random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gmm.fit(fit_words)
        # every known vocabulary word in the space of the mixture, with its posteriors
        self._words = np.zeros((len(vocab), fit_words.shape[1]))
        self._words[self._known] = self._project(vectors[self._known])
        self._posteriors = np.zeros((len(vocab), spec.centres))
        self._posteriors[self._known] = self.gmm.predict_proba(self._words[self._known])
        self.pca = None
        if spec.pca is not None:
            texts = list(train_texts)
            if len(texts) > PCA_FIT_MAX:
                keep = np.sort(np.random.default_rng(seed).choice(len(texts), PCA_FIT_MAX, replace=False))
                texts = [texts[i] for i in keep]
            limit = min(len(texts), self.fisher_dim)
            if spec.pca > limit:
                raise DataError(f"text input {spec.describe()}: PCA to {spec.pca} dimensions, but the Fisher vectors "
                                f"have {self.fisher_dim} and {len(texts)} training captions fit the PCA "
                                f"(at most {limit}); lower pca")
            self.pca = PCA(n_components=spec.pca, random_state=seed).fit(self.fisher_vectors(texts))

    def _project(self, words: np.ndarray) -> np.ndarray:
        return self.ica.transform(words) if self.ica is not None else words

    @property
    def fisher_dim(self) -> int:
        return 2 * self.spec.centres * int(self._words.shape[1])

    @property
    def dim(self) -> int:
        return self.spec.pca if self.spec.pca is not None else self.fisher_dim

    def fisher_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised Fisher vectors ``(n, 2KD)`` float32 (before PCA)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.fisher_dim), dtype=np.float32)
        for start in range(0, len(texts), _CHUNK):
            out[start:start + _CHUNK] = self._chunk(texts[start:start + _CHUNK])
        return out

    def _chunk(self, texts: Sequence[str]) -> np.ndarray:
        """Sufficient statistics per caption and centre (``T`` the caption's words with a vector):
        ``S0_k = sum_t g_tk``, ``S1_k = sum_t g_tk x_t``, ``S2_k = sum_t g_tk x_t^2``; then
        ``G_mu_k = (S1_k - mu_k S0_k) / (T sqrt(w_k) sigma_k)`` and
        ``G_sigma_k = ((S2_k - 2 mu_k S1_k + mu_k^2 S0_k) / sigma_k^2 - S0_k) / (T sqrt(2 w_k))``;
        signed square root, L2 normalisation."""
        counts = self.vocab.counts_matrix(texts)
        total = np.maximum(np.asarray(counts @ self._known.astype(np.float64)).ravel(), 1.0)[:, None]
        mu, sigma = self.gmm.means_, np.sqrt(self.gmm.covariances_)
        weights = self.gmm.weights_
        s0 = np.asarray(counts @ self._posteriors)  # (n, K)
        k, d = mu.shape
        g_mu = np.empty((len(texts), k, d))
        g_sigma = np.empty((len(texts), k, d))
        for c in range(k):
            post = self._posteriors[:, c:c + 1]
            s1 = np.asarray(counts @ (post * self._words))
            s2 = np.asarray(counts @ (post * self._words ** 2))
            g_mu[:, c] = (s1 - mu[c] * s0[:, c:c + 1]) / (sigma[c] * np.sqrt(weights[c]) * total)
            centred = s2 - 2 * mu[c] * s1 + mu[c] ** 2 * s0[:, c:c + 1]
            g_sigma[:, c] = (centred / sigma[c] ** 2 - s0[:, c:c + 1]) / (np.sqrt(2 * weights[c]) * total)
        fv = np.concatenate([g_mu.reshape(len(texts), -1), g_sigma.reshape(len(texts), -1)], axis=1)
        fv = np.sign(fv) * np.sqrt(np.abs(fv))
        norm = np.linalg.norm(fv, axis=1, keepdims=True)
        return fv / np.where(norm > 0, norm, 1.0)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """The captions' text features ``(n, dim)`` float32: Fisher vectors, PCA-projected if ``pca``."""
        if self.pca is None:
            return self.fisher_vectors(texts)
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), _CHUNK):
            out[start:start + _CHUNK] = self.pca.transform(self.fisher_vectors(texts[start:start + _CHUNK]))
        return out
