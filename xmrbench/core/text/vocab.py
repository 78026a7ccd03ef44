"""Tokenizers and vocabulary.

Two tokenizers (``TOKENIZERS``), both lower-casing:

- ``words`` (the default): words of letters and digits (with an apostrophe suffix such as
  ``'s``); punctuation is dropped;
- ``treebank``: the peers' tokenizer (VSE++, SCAN, VSRN build their vocabularies with
  NLTK's ``word_tokenize``): Penn Treebank rules, punctuation kept as tokens (the final
  ``.`` of a caption is a token), contractions split (``isn't`` -> ``is``, ``n't``).
  The caption is tokenized as one line (NLTK's ``preserve_line``): the peers first split
  a caption into sentences, which only differs for a caption of several sentences (a
  period inside it stays on its word here).

The vocabulary is built from the *training* captions only (several public
vocabularies were built including test captions; we never do). Special tokens use
the SCAN order: ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2, ``<unk>`` = 3, and the
json file format is SCAN's (``word2idx``, ``idx2word``, ``idx``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from xmrbench.errors import DataError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _treebank(text: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    return word_tokenize(text.lower(), preserve_line=True)


TOKENIZERS = {"words": _words, "treebank": _treebank}


def tokenize(text: str, tokenizer: str = "words") -> list[str]:
    """Lower-case tokens of ``text`` by ``tokenizer`` (module docstring)."""
    try:
        fn = TOKENIZERS[tokenizer]
    except KeyError:
        raise DataError(f"unknown tokenizer {tokenizer!r}; known: {', '.join(TOKENIZERS)}") from None
    return fn(text)


class Vocabulary:
    """Word <-> index mapping with SCAN-ordered special tokens."""

    def __init__(self, words: Sequence[str], *, tokenizer: str = "words"):
        words = list(words)
        self.tokenizer = tokenizer  # how texts are split before lookup (``TOKENIZERS``)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise DataError(f"a vocabulary must start with {', '.join(SPECIALS)}")
        if len(set(words)) != len(words):
            raise DataError("a vocabulary holds a word twice")
        self.idx2word = words
        self.word2idx = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, texts: Iterable[str], *, min_count: int = 1, tokenizer: str = "words") -> Vocabulary:
        """Words occurring at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(tok for text in texts for tok in tokenize(text, tokenizer))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept], tokenizer=tokenizer)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: str) -> bool:
        return word in self.word2idx

    def encode(self, text: str, *, max_len: int | None = None) -> list[int]:
        """``<start> w1 ... wn <end>``, unknown words -> ``<unk>``, at most ``max_len`` words."""
        unk = self.word2idx[UNK]
        ids = [self.word2idx.get(tok, unk) for tok in tokenize(text, self.tokenizer)]
        if max_len is not None:
            ids = ids[:max_len]
        return [self.word2idx[START], *ids, self.word2idx[END]]

    def encode_batch(self, texts: Sequence[str], *, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids ``(B, L)`` (pad = 0) and lengths ``(B,)``."""
        seqs = [self.encode(t, max_len=max_len) for t in texts]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        out = torch.zeros(len(seqs), int(lengths.max()) if seqs else 0, dtype=torch.long)
        for i, seq in enumerate(seqs):
            out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out, lengths

    def counts_matrix(self, texts: Sequence[str]):
        """Sparse (len(texts), len(self)) word-count matrix (specials never counted)."""
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for i, text in enumerate(texts):
            for tok in tokenize(text, self.tokenizer):
                j = self.word2idx.get(tok)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        data = np.ones(len(rows), dtype=np.float32)
        return csr_matrix((data, (rows, cols)), shape=(len(texts), len(self)), dtype=np.float32)

    def to_json(self) -> dict:
        return {"word2idx": self.word2idx, "idx2word": {str(i): w for i, w in enumerate(self.idx2word)}, "idx": len(self)}

    @classmethod
    def from_json(cls, data: dict, *, where: str = "vocabulary") -> Vocabulary:
        try:
            idx2word = data["idx2word"]
            words = [idx2word[str(i)] if isinstance(idx2word, dict) else idx2word[i] for i in range(len(idx2word))]
        except (KeyError, TypeError, IndexError):
            raise DataError("not a vocabulary json (needs word2idx/idx2word/idx)", where=where) from None
        return cls(words)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read vocabulary ({exc.__class__.__name__})", where=str(path)) from None
        return cls.from_json(data, where=str(path))
