"""From a dataset split to model inputs: image feature batches and text batches.

Text input kinds: ``tokens`` (padded word ids), ``tfidf`` (tf-idf vectors of the
captions), ``tags`` (A3VSE's tag scores and queries) and ``features`` (the dataset's
own precomputed text vectors, ``Split.text_feats``, dense or scipy-sparse: the
labelled sets), and, from the pretrained word vectors of ``data.word_vectors``,
``mean_wordvec`` (the mean of a caption's word vectors) and ``fisher`` /
``fisher:k=30,pca=256,ica=on`` (Fisher vectors of the caption's word vectors;
``xmrbench/core/text/word_features.py``, docs/text_features.md). The vocabulary, the
tf-idf statistics and the Fisher-vector models (ICA, mixture, PCA) are fitted on the
training captions only. Image and text features stay in whatever array the dataset holds (a
memory map for large real data) and are read one batch at a time; ``data.train_images``
and ``eval.dev_images`` restrict a split to its first images by a view
(:meth:`~xmrbench.data.dataset.Split.prefix`), not a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import issparse

from xmrbench.config import DataConfig
from xmrbench.core.models.base import InputDims, TextBatch
from xmrbench.core.text.tfidf import TfidfFeaturizer
from xmrbench.core.text.vocab import SPECIALS, Vocabulary, tokenize
from xmrbench.core.text.word_features import (
    FISHER_KIND,
    MEAN_KIND,
    FisherVectorEncoder,
    MeanWordVector,
    is_word_feature_kind,
    parse_fisher_kind,
)
from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.errors import DataError

TEXT_INPUTS = ("tokens", "tfidf", "tags", "features", MEAN_KIND, FISHER_KIND)
#: ``data.word_vectors`` prefix naming the synthetic world's GloVe stand-in: ``synthetic:DIM``
SYNTHETIC_VECTORS = "synthetic:"


class _TokenText:
    def __init__(self, vocab: Vocabulary, captions: list[str], max_len: int):
        self._ids = [vocab.encode(c, max_len=max_len) for c in captions]

    def batch(self, index: np.ndarray) -> TextBatch:
        seqs = [self._ids[int(i)] for i in index]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        tokens = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return TextBatch(tokens=tokens, lengths=lengths)


class _VectorText:
    """One vector per caption: a scipy sparse matrix, or a dense array (memory map) read by rows."""

    def __init__(self, matrix):
        self._matrix = matrix.tocsr() if issparse(matrix) else matrix

    def batch(self, index: np.ndarray) -> TextBatch:
        rows = self._matrix[np.asarray(index, dtype=np.int64)]
        rows = rows.toarray() if issparse(rows) else rows
        return TextBatch(vectors=torch.from_numpy(np.asarray(rows, dtype=np.float32)))


class _TagInputs:
    """The ``tags`` input kind (A3VSE Sec. 4.2): over the tags carried by the split's
    images, image-level tag scores ``s_g (N_img, T)`` (a tag listed twice keeps its
    highest score) and caption queries ``q (N_txt, T)``, 1 where a caption word is the
    tag or ``extras["tag_expansion"][word]`` lists it. Tags no image of the split
    carries would only add zeros to ``s_g^T q`` and are left out."""

    def __init__(self, split: Split):
        from scipy.sparse import csr_matrix

        tags, expansion = split.extras.get("tags"), split.extras.get("tag_expansion")
        if tags is None or expansion is None:
            raise DataError(f"split {split.name!r} has no image tags (extras 'tags' and 'tag_expansion')")
        column = {t: i for i, t in enumerate(sorted({str(t) for image in tags for t, _ in image}))}
        self.n_tags = len(column)
        scores: list[dict[int, float]] = []
        for image in tags:
            best: dict[int, float] = {}
            for tag, score in image:
                best[column[str(tag)]] = max(float(score), best.get(column[str(tag)], 0.0))
            scores.append(best)
        queries = []
        for caption in split.captions:
            words = set(tokenize(caption))
            matched = {t for w in words for t in (w, *expansion.get(w, ()))}
            queries.append({column[t]: 1.0 for t in matched if t in column})
        self.images = self._matrix(scores, csr_matrix)
        self.queries = self._matrix(queries, csr_matrix)

    def _matrix(self, rows: list[dict[int, float]], csr_matrix):
        indptr = np.cumsum([0] + [len(r) for r in rows])
        cols = np.fromiter((c for r in rows for c in sorted(r)), dtype=np.int64, count=int(indptr[-1]))
        vals = np.fromiter((r[c] for r in rows for c in sorted(r)), dtype=np.float32, count=int(indptr[-1]))
        return csr_matrix((vals, cols, indptr), shape=(len(rows), self.n_tags), dtype=np.float32)


@dataclass
class PreparedSplit:
    """A split ready for a model: ``image_batch(idx)`` and ``text_batch(idx)``."""

    split: Split
    image_input: str
    text: _TokenText | _VectorText
    tags: _TagInputs | None = None
    # texts that are not the split's captions (phrases, say) -> a TextBatch, processed like
    # the captions (same vocabulary or tf-idf statistics); None where texts are tag queries
    strings: Callable[[list[str]], TextBatch] | None = None

    @property
    def name(self) -> str:
        return self.split.name

    @property
    def n_images(self) -> int:
        return self.split.n_images

    @property
    def n_captions(self) -> int:
        return self.split.n_captions

    @property
    def captions_per_image(self) -> int:
        return self.split.captions_per_image

    def caption_image(self) -> np.ndarray:
        return self.split.caption_image()

    def image_batch(self, index: np.ndarray) -> torch.Tensor:
        if self.image_input == "tags":
            return torch.from_numpy(self.tags.images[np.asarray(index)].toarray())  # type: ignore[union-attr]
        feats = self.split.image_features(self.image_input, index)
        if not np.isfinite(feats).all():
            bad = int(np.asarray(index)[np.flatnonzero(~np.isfinite(feats.reshape(len(feats), -1)).all(1))[0]])
            raise DataError(f"split {self.name!r}: image {bad} has NaN or inf features")
        return torch.from_numpy(feats)

    def text_batch(self, index: np.ndarray) -> TextBatch:
        return self.text.batch(np.asarray(index))

    def strings_batch(self, texts: list[str]) -> TextBatch:
        """A batch of arbitrary texts, processed like the captions."""
        if self.strings is None:
            raise DataError(f"split {self.name!r}: texts other than its captions cannot be encoded "
                            "with this text input kind")
        return self.strings(texts)


@dataclass
class PreparedData:
    """A dataset prepared for one kind of model input (image kind x text kind)."""

    data: RetrievalData
    cfg: DataConfig
    image_input: str
    text_input: str
    vocab: Vocabulary = field(init=False)
    vocabulary: str = field(init=False)  # what the vocabulary is, for the run fingerprint
    _tfidf: TfidfFeaturizer | None = field(init=False, default=None)
    _sentences: MeanWordVector | FisherVectorEncoder | None = field(init=False, default=None)
    _splits: dict[str, PreparedSplit] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        train = self.raw_split("train")
        self.vocabulary = f"train captions, min_count={self.cfg.vocab_min_count}"
        if self.text_input not in TEXT_INPUTS and not is_word_feature_kind(self.text_input):
            raise DataError(f"unknown text input {self.text_input!r}; known: {', '.join(TEXT_INPUTS)}")
        if self.text_input == "features":
            if train.text_feats is None:
                raise DataError(f"dataset {self.data.name!r} has no text features (text input 'features' reads "
                                "the text vectors of a labelled set)")
            self.vocabulary = "none: the dataset's text features"
        elif train.text_feats is not None and not any(train.captions):
            raise DataError(f"dataset {self.data.name!r} has text features but no caption text; "
                            "use model.text_input: features")
        if self.cfg.vocab_file:  # a user's vocabulary file (SCAN or ADAPT order) instead of our own
            from xmrbench.data.vocab_file import load_vocab_file, resolve_vocab_path

            loaded = load_vocab_file(resolve_vocab_path(self.cfg.vocab_file, self.cfg.root))
            self.vocab = loaded.vocab
            self.vocab.tokenizer = self.cfg.tokenizer
            self.vocabulary = f"file {Path(loaded.path).name}, sha256 {loaded.sha256[:16]}"
        else:
            texts = list(train.captions)
            if self.cfg.vocab_texts:
                texts += self._machine_texts()
                self.vocabulary += f" and the {' and '.join(self.cfg.vocab_texts)} of the training images"
            self.vocab = Vocabulary.build(texts, min_count=self.cfg.vocab_min_count, tokenizer=self.cfg.tokenizer)
        if self.cfg.tokenizer != "words":  # the default leaves the fingerprints of earlier runs alone
            self.vocabulary += f"; tokenizer {self.cfg.tokenizer}"
        if self.text_input == "tfidf":
            self._tfidf = TfidfFeaturizer(self.vocab, train.captions)
        self._word_vectors: np.ndarray | None = None
        if self.cfg.word_vectors:
            self.vocabulary += f"; word vectors {Path(self.cfg.word_vectors).name}, sha256 {self._vectors_sha256()[:16]}"
        if is_word_feature_kind(self.text_input):
            self._sentences = self._sentence_encoder(train)
        if (self.image_input == "tags") != (self.text_input == "tags"):  # one tag index serves both sides
            raise DataError("the 'tags' input kind must be used for images and texts together")

    @property
    def sentence_encoder(self) -> MeanWordVector | FisherVectorEncoder | None:
        """The fitted ``mean_wordvec`` / ``fisher`` encoder of this preparation (None for other text inputs)."""
        return self._sentences

    def _sentence_encoder(self, train: Split) -> MeanWordVector | FisherVectorEncoder:
        """The ``mean_wordvec`` or ``fisher`` encoder, fitted on the training captions with
        random_state 0 (docs/text_features.md)."""
        if not self.cfg.word_vectors:
            raise DataError(f"text input {self.text_input!r} pools pretrained word vectors: set data.word_vectors "
                            "(a GloVe / word2vec text file, or synthetic:DIM on the synthetic world)")
        from xmrbench.data.wordvec import align_to_vocab, read_word_vectors

        vectors, report = align_to_vocab(read_word_vectors(self._vectors_path(), words=self.vocab.idx2word),
                                         self.vocab, init="zeros")
        missing = set(report.missing)
        known = np.array([w not in SPECIALS and w not in missing for w in self.vocab.idx2word], dtype=bool)
        if self.text_input == MEAN_KIND:
            return MeanWordVector(self.vocab, vectors, known)
        try:
            spec = parse_fisher_kind(self.text_input)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        return FisherVectorEncoder(self.vocab, vectors, known, train.captions, spec, seed=0)

    def _machine_texts(self) -> list[str]:
        """The texts of ``data.vocab_texts``, from the training split and the un-annotated
        one (if any): each image's regional semantics as one string, each of its image-level
        tags (any score) as one string."""
        from xmrbench.data.sparse import UNANNOTATED

        splits = [self.raw_split("train")]
        if UNANNOTATED in self.data.split_names:
            splits.append(self.raw_split(UNANNOTATED))
        texts: list[str] = []
        for split in splits:
            for kind in self.cfg.vocab_texts:
                values = split.extras.get(kind)
                if values is None:
                    raise DataError(f"data.vocab_texts names {kind!r}, but split {split.name!r} of dataset "
                                    f"{self.data.name!r} has no {kind!r}")
                if kind == "semantics":
                    texts += [str(text) for text in values]
                else:  # [[tag, score], ...] per image
                    texts += [str(tag) for tags in values for tag, _ in tags]
        return texts

    def _vectors_path(self) -> Path:
        """The word-vector file: ``data.word_vectors`` resolved like ``vocab_file``, or, for
        ``synthetic:DIM``, the synthetic world's GloVe stand-in of that size (generated once
        into the cache from ``data.world_seed``; docs/synthetic_world.md)."""
        from xmrbench.data.vocab_file import resolve_vocab_path

        spec = str(self.cfg.word_vectors)
        if spec.startswith(SYNTHETIC_VECTORS):
            from xmrbench.data.synthetic.wordvec import load_synthetic_word_vectors

            dim = spec[len(SYNTHETIC_VECTORS):]
            if not dim.isdigit() or int(dim) < 1:
                raise DataError(f"data.word_vectors {spec!r}: write synthetic:DIM with a positive size, e.g. synthetic:300")
            return load_synthetic_word_vectors(seed=self.cfg.world_seed, dim=int(dim))[1]
        return resolve_vocab_path(spec, self.cfg.root)

    def _vectors_sha256(self) -> str:
        import hashlib

        path = self._vectors_path()
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read the word vectors ({exc.strerror or exc})", where=str(path)) from None
        return digest.hexdigest()

    def word_vectors(self) -> np.ndarray | None:
        """``data.word_vectors`` aligned to the vocabulary, ``(len(vocab), D)`` float32, or None.

        Words the file lacks (and the specials but ``<pad>``) get draws from a normal
        distribution of the found vectors' spread, seeded with 0, so every seed of a cell
        starts from the same matrix (``data/wordvec.py``).

        None as well for the ``mean_wordvec`` and ``fisher`` text inputs: there the word
        vectors are pooled into the sentence features, and no token embedding reads them.
        """
        if not self.cfg.word_vectors or self._sentences is not None:
            return None
        if self._word_vectors is None:
            from xmrbench.data.wordvec import align_to_vocab, read_word_vectors

            vectors = read_word_vectors(self._vectors_path(), words=self.vocab.idx2word)
            self._word_vectors, _ = align_to_vocab(vectors, self.vocab, seed=0)
        return self._word_vectors

    def raw_split(self, name: str) -> Split:
        split = self.data.split(name)
        if name == "train" and self.cfg.train_images is not None and self.cfg.train_images < split.n_images:
            split = split.prefix(self.cfg.train_images, name="train")
        return split

    def split(self, name: str, *, max_images: int | None = None) -> PreparedSplit:
        key = f"{name}:{max_images}"
        if key not in self._splits:
            split = self.raw_split(name)
            if max_images is not None and max_images < split.n_images:
                split = split.prefix(max_images, name=name)
            tags = _TagInputs(split) if self.image_input == "tags" else None
            if self.text_input == "tfidf":
                text = _VectorText(self._tfidf.transform(split.captions))  # type: ignore[union-attr]
            elif self._sentences is not None:
                text = _VectorText(self._sentences.transform(split.captions))
            elif self.text_input == "tags":
                text = _VectorText(tags.queries)  # type: ignore[union-attr]
            elif self.text_input == "features":
                if split.text_feats is None:
                    raise DataError(f"split {split.name!r} of dataset {self.data.name!r} has no text features")
                text = _VectorText(split.text_feats)
            else:
                text = _TokenText(self.vocab, split.captions, self.cfg.max_caption_len)
            self._splits[key] = PreparedSplit(split=split, image_input=self.image_input, text=text, tags=tags,
                                              strings=self._strings())
        return self._splits[key]

    def _strings(self) -> Callable[[list[str]], TextBatch] | None:
        return self.encode_strings if self.text_input in ("tfidf", "tokens") or self._sentences is not None else None

    def encode_strings(self, texts: list[str]) -> TextBatch:
        """Arbitrary texts as a TextBatch, with the training split's vocabulary, tf-idf statistics
        or sentence-vector encoder."""
        if self.text_input == "tfidf":
            return _VectorText(self._tfidf.transform(texts)).batch(np.arange(len(texts)))  # type: ignore[union-attr]
        if self._sentences is not None:
            return _VectorText(self._sentences.transform(texts)).batch(np.arange(len(texts)))
        return _TokenText(self.vocab, texts, self.cfg.max_caption_len).batch(np.arange(len(texts)))

    @property
    def dims(self) -> InputDims:
        train = self.raw_split("train")
        if self.image_input == "tags":  # informative only: each split has its own tag index
            n_tags = self.split("train").tags.n_tags  # type: ignore[union-attr]
            return InputDims(image_dim=n_tags, vocab_size=len(self.vocab), text_dim=n_tags)
        probe = train.image_features(self.image_input, np.arange(1))
        return InputDims(
            image_dim=int(probe.shape[-1]),
            vocab_size=len(self.vocab),
            text_dim=self._tfidf.dim if self._tfidf is not None else self._sentences.dim if self._sentences is not None
            else (int(train.text_feats.shape[1]) if self.text_input == "features" else None),
            n_regions=int(probe.shape[1]) if probe.ndim == 3 else None,
        )
