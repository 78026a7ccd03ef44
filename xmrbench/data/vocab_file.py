"""Vocabulary files users have: SCAN's json, ADAPT's order, plain word lists.

Our :class:`~xmrbench.core.text.vocab.Vocabulary` uses SCAN's special tokens and order
(``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2, ``<unk>`` = 3). Peer files come as

- SCAN / VSRN / BFAN json: ``{"word2idx": {...}, "idx2word": {"0": ...}, "idx": n}``,
  specials in our order (``f30k_precomp_vocab.json``: 8,481 words, ``coco_precomp``:
  11,353; words seen at least 4 times in the training captions);
- ADAPT's order: ``<pad>`` = 0, ``<unk>`` = 1, ``<start>`` = 2, ``<end>`` = 3, in the
  same json keys;
- a json list of words in index order.

:func:`load_vocab_file` reads any of these and maps it onto ours: the four specials
move to our positions and every other word keeps its relative order (so for SCAN
and ADAPT files a word's index does not change: their regular words start at 4, as
ours do). The mapping from the file's ids to ours is returned too, for data that was
stored as token ids of the file (``file_to_ours[file_id] = our_id``). See
``docs/formats/vocabulary.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.core.text.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary
from xmrbench.errors import DataError

ADAPT_SPECIALS = (PAD, UNK, START, END)
ORDERS = {"scan": SPECIALS, "adapt": ADAPT_SPECIALS}


@dataclass(frozen=True)
class VocabFile:
    """A vocabulary read from a file: ours, the file's special-token order, the id map."""

    vocab: Vocabulary
    order: str  # "scan", "adapt" or "other" (specials found elsewhere)
    file_to_ours: np.ndarray  # (n_words,) int64: our index of the file's index i
    path: str
    sha256: str  # of the file's bytes: a run records which vocabulary it used

    @property
    def words(self) -> int:
        """Regular words (specials excluded)."""
        return len(self.vocab) - len(SPECIALS)


def _words_from_json(data: Any, where: str) -> list[str]:
    if isinstance(data, list):
        words = data
    elif isinstance(data, dict) and ("idx2word" in data or "word2idx" in data):
        words = _words_from_maps(data, where)
    else:
        raise DataError("not a vocabulary: expected word2idx/idx2word/idx (SCAN json) or a list of words", where=where)
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w:
            raise DataError(f"index {i}: {w!r} is not a word", where=where)
    return list(words)


def _words_from_maps(data: dict, where: str) -> list[str]:
    idx2word = data.get("idx2word")
    word2idx = data.get("word2idx")
    if idx2word is not None:
        if isinstance(idx2word, list):
            words = list(idx2word)
        elif isinstance(idx2word, dict):
            try:
                pairs = sorted((int(k), v) for k, v in idx2word.items())
            except (TypeError, ValueError):
                raise DataError("idx2word keys must be integers", where=where) from None
            if [k for k, _ in pairs] != list(range(len(pairs))):
                missing = sorted(set(range(len(pairs))) - {k for k, _ in pairs})
                raise DataError(f"idx2word skips index {missing[0] if missing else '?'}", where=where)
            words = [v for _, v in pairs]
        else:
            raise DataError("idx2word must be an object or a list", where=where)
        if isinstance(word2idx, dict):
            for i, w in enumerate(words):
                if word2idx.get(w) != i:
                    raise DataError(
                        f"word2idx and idx2word disagree: idx2word[{i}] = {w!r} but word2idx[{w!r}] = "
                        f"{word2idx.get(w)!r}",
                        where=where,
                    )
            if len(word2idx) != len(words):
                raise DataError(f"word2idx has {len(word2idx)} words, idx2word {len(words)}", where=where)
    else:
        if not isinstance(word2idx, dict):
            raise DataError("word2idx must be an object", where=where)
        by_index = sorted((int(i), w) for w, i in word2idx.items())
        if [i for i, _ in by_index] != list(range(len(by_index))):
            raise DataError("word2idx indices are not 0..n-1", where=where)
        words = [w for _, w in by_index]
    if "idx" in data and data["idx"] != len(words):
        raise DataError(f"idx is {data['idx']!r} but the file lists {len(words)} words", where=where)
    return words


def vocab_from_words(words: list[str], *, where: str = "vocabulary") -> tuple[Vocabulary, str, np.ndarray]:
    """Map a word list in any special-token order onto our order.

    Returns (vocabulary, order name, file_to_ours). All four specials must be present.
    """
    seen: set[str] = set()
    for i, w in enumerate(words):
        if w in seen:
            raise DataError(f"word {w!r} appears twice (again at index {i})", where=where)
        seen.add(w)
    missing = [s for s in SPECIALS if s not in words]
    if missing:
        raise DataError(f"no special token(s) {', '.join(missing)} (a vocabulary needs {', '.join(SPECIALS)})",
                        where=where)
    head = tuple(words[: len(SPECIALS)])
    order = next((name for name, specials in ORDERS.items() if head == specials), "other")
    regular = [w for w in words if w not in SPECIALS]
    vocab = Vocabulary([*SPECIALS, *regular])
    file_to_ours = np.array([vocab.word2idx[w] for w in words], dtype=np.int64)
    return vocab, order, file_to_ours


def load_vocab_file(path: str | os.PathLike) -> VocabFile:
    """Read a vocabulary json in SCAN or ADAPT order (or a json word list) as ours.

    Fails with a one-line ``DataError`` naming the file for: unreadable json, a file that
    is not a vocabulary, word2idx and idx2word that disagree, ``idx`` that does not match
    the word count, a word listed twice, or a missing special token.
    """
    path = Path(path)
    where = str(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise DataError("vocabulary file does not exist", where=where) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read vocabulary json ({exc.__class__.__name__}: {exc})", where=where) from None
    words = _words_from_json(data, where)
    vocab, order, file_to_ours = vocab_from_words(words, where=where)
    return VocabFile(vocab=vocab, order=order, file_to_ours=file_to_ours, path=where,
                     sha256=hashlib.sha256(raw).hexdigest())


def write_vocab_file(vocab: Vocabulary, path: str | os.PathLike, *, order: str = "scan") -> Path:
    """Write ``vocab`` as SCAN json (``word2idx``, ``idx2word`` with string keys, ``idx``)
    with the specials in ``order`` (``"scan"`` or ``"adapt"``)."""
    if order not in ORDERS:
        raise DataError(f"unknown vocabulary order {order!r}; known: {', '.join(ORDERS)}")
    regular = [w for w in vocab.idx2word if w not in SPECIALS]
    words = [*ORDERS[order], *regular]
    doc = {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": {str(i): w for i, w in enumerate(words)},
           "idx": len(words)}
    path = Path(path)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def resolve_vocab_path(vocab_file: str, root: str | None) -> Path:
    """Where ``data.vocab_file`` points: absolute as given; relative under ``data.root``
    if that file exists, else relative to the working directory."""
    path = Path(vocab_file).expanduser()
    if not path.is_absolute() and root:
        under_root = Path(root) / path
        if under_root.is_file():
            return under_root
    return path


def caption_coverage(vocab: Vocabulary, captions: list[str]) -> float:
    """Fraction of caption tokens the vocabulary knows (1.0 for no tokens)."""
    from xmrbench.core.text.vocab import tokenize

    total = known = 0
    for cap in captions:
        toks = tokenize(cap)
        total += len(toks)
        known += sum(1 for t in toks if t in vocab)
    return 1.0 if total == 0 else known / total
