"""Orderless TF-IDF sentence features (the two-branch networks use orderless text
features; the paper notes tf-idf gives results close to its Fisher vectors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xmrbench.core.text.vocab import Vocabulary


class TfidfFeaturizer:
    """TF-IDF over a fixed vocabulary, fitted on the training captions only.

    Rows are L2-normalised; idf is smoothed (``log((1 + n) / (1 + df)) + 1``).
    """

    def __init__(self, vocab: Vocabulary, train_texts: Sequence[str]):
        # imported here: scikit-learn takes seconds to import, and commands that build no
        # tf-idf features (report, list, plan) need not pay for it
        from sklearn.feature_extraction.text import TfidfTransformer

        self.vocab = vocab
        self._transformer = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=False)
        self._transformer.fit(vocab.counts_matrix(train_texts))

    @property
    def dim(self) -> int:
        return len(self.vocab)

    def transform(self, texts: Sequence[str]):
        """Sparse CSR ``(len(texts), dim)`` float32 matrix."""
        return self._transformer.transform(self.vocab.counts_matrix(texts)).astype(np.float32)
