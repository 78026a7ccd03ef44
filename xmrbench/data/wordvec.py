"""Pretrained word vectors in the GloVe / word2vec text format, aligned to a vocabulary.

The file has one word per line followed by its D values, separated by single spaces
(``the 0.418 0.24968 -0.41242 ...``); a word2vec-style file starts with a header line
``<count> <D>``. Some GloVe releases (840B) hold words with spaces in them, so a line's
last D fields are the vector and everything before them is the word. See
``docs/formats/word_vectors.md``.

:func:`align_to_vocab` turns the vectors into an embedding matrix for a
:class:`~xmrbench.core.text.vocab.Vocabulary` (A3VSE and ADAPT initialise their word
embeddings with GloVe):

- a word found in the file gets its vector (with ``lowercase=True``, a word missing in
  its own case is looked up lower-cased; vocabularies are lower-case already);
- ``<pad>`` gets zeros;
- every other word (``<start>``, ``<end>``, ``<unk>`` and words the file lacks) gets a
  draw from N(0, s^2), s = the standard deviation of all found vectors' values (so
  unknown words look like known ones to the first layer), from a generator seeded
  with ``seed``; ``init="zeros"`` gives zeros instead;
- the report gives the coverage (found / regular words; specials excluded) and the
  missing words.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmrbench.core.text.vocab import PAD, SPECIALS, Vocabulary
from xmrbench.errors import DataError

INITS = ("normal", "zeros")


@dataclass
class WordVectors:
    """Words and their vectors: ``vectors`` (n_words, D) float32, row i = ``words[i]``."""

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # lines whose word appeared earlier (the first is kept)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def vector(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]


@dataclass(frozen=True)
class Alignment:
    """What :func:`align_to_vocab` found: coverage over regular words and the misses."""

    found: int
    total: int
    missing: list[str]
    init: str
    init_std: float

    @property
    def coverage(self) -> float:
        return self.found / self.total if self.total else 1.0


def _parse_header(line: str) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def read_word_vectors(
    path: str | os.PathLike, *, words: Iterable[str] | None = None, max_words: int | None = None
) -> WordVectors:
    """Read a GloVe / word2vec text file.

    ``words``: keep only these (the rest of the file is scanned but not stored, so a
    5 GB file costs memory for the vocabulary only); ``max_words``: stop after that many
    lines. A one-line ``DataError`` names the file and line for: an empty file, a line
    whose value count differs from the first vector line (or the header), a value that
    is not a number, NaN/inf values, and a header count that the file does not hold.
    """
    path = Path(path)
    where = str(path)
    keep = None if words is None else set(words)
    out_words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    dup = 0
    dim: int | None = None
    header: tuple[int, int] | None = None
    lines_read = 0
    try:
        f = open(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise DataError(f"cannot open word vectors ({exc.strerror or exc})", where=where) from None
    with f:
        try:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\n").rstrip("\r")
                if lineno == 1 and (parsed := _parse_header(line)) is not None:
                    header, dim = parsed, parsed[1]
                    continue
                if not line.strip():
                    continue
                parts = line.rstrip(" ").split(" ")
                if dim is None:
                    dim = len(parts) - 1
                    if dim < 1:
                        raise DataError(f"line {lineno}: a word without a vector", where=where)
                if len(parts) < dim + 1:
                    raise DataError(f"line {lineno}: {len(parts) - 1} values, expected {dim}", where=where)
                word = " ".join(parts[: len(parts) - dim])  # more fields: a word with spaces (GloVe 840B)
                lines_read += 1
                if word in seen:
                    dup += 1
                    continue
                seen.add(word)
                if keep is None or word in keep:
                    try:
                        vec = np.array(parts[len(parts) - dim :], dtype=np.float64)
                    except ValueError:
                        bad = next(p for p in parts[len(parts) - dim :] if not _is_float(p))
                        raise DataError(f"line {lineno}: {bad!r} is not a number", where=where) from None
                    if not np.isfinite(vec).all():
                        raise DataError(f"line {lineno}: the vector of {word!r} holds NaN or inf", where=where)
                    out_words.append(word)
                    rows.append(vec.astype(np.float32))
                if max_words is not None and lines_read >= max_words:
                    break
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-8 ({exc.reason})", where=where) from None
    if dim is None:
        raise DataError("no word vectors in the file", where=where)
    if header is not None and max_words is None and lines_read != header[0]:
        raise DataError(f"the header announces {header[0]} words but the file holds {lines_read}", where=where)
    vectors = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    return WordVectors(words=out_words, vectors=vectors, duplicates=dup)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def align_to_vocab(
    vectors: WordVectors, vocab: Vocabulary, *, init: str = "normal", seed: int = 0, lowercase: bool = True
) -> tuple[np.ndarray, Alignment]:
    """Embedding matrix (len(vocab), D) float32 for ``vocab`` from ``vectors`` (see the
    module docstring for the init of words the file lacks), and an :class:`Alignment`."""
    if init not in INITS:
        raise DataError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    found_rows: dict[int, int] = {}
    missing: list[str] = []
    for i, word in enumerate(vocab.idx2word):
        if word in SPECIALS:
            continue
        j = vectors.index.get(word)
        if j is None and lowercase:
            j = vectors.index.get(word.lower())
        if j is None:
            missing.append(word)
        else:
            found_rows[i] = j
    dim = vectors.dim
    found_values = vectors.vectors[list(found_rows.values())] if found_rows else vectors.vectors
    std = float(found_values.std()) if found_values.size else 1.0
    if init == "normal":
        out = np.random.default_rng(seed).normal(0.0, std or 1.0, size=(len(vocab), dim)).astype(np.float32)
    else:
        out = np.zeros((len(vocab), dim), dtype=np.float32)
    for i, j in found_rows.items():
        out[i] = vectors.vectors[j]
    out[vocab.word2idx[PAD]] = 0.0
    total = len(vocab) - len(SPECIALS)
    return out, Alignment(found=len(found_rows), total=total, missing=missing, init=init, init_std=std)


def write_word_vectors(
    path: str | os.PathLike, words: list[str], vectors: np.ndarray, *, header: bool = False, decimals: int = 4
) -> Path:
    """Write a GloVe text file (``header=True``: word2vec style, with ``<count> <D>`` first)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(words) != vectors.shape[0]:
        raise DataError(f"{len(words)} words for vectors of shape {vectors.shape}")
    for w in words:
        if not w or w != w.strip() or "\n" in w:
            raise DataError(f"word {w!r} cannot be written to a text vector file")
    path = Path(path)
    fmt = f"{{:.{decimals}f}}"
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            if header:
                f.write(f"{len(words)} {vectors.shape[1]}\n")
            for w, row in zip(words, vectors):
                # "-0.0000" and "0.0000" are the same number: write one spelling
                f.write(w + " " + " ".join(fmt.format(v + 0.0) for v in np.round(row.astype(np.float64), decimals))
                        + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
