"""Word vectors that play the role of GloVe for the synthetic world.

Every word the world can write (captions, detector semantics, tags) plus 400
distractor words, as a GloVe text file. A word's vector is a fixed random linear map
``W`` (64 -> D) of the latent of the concept it names, plus word-specific noise:

- synonyms and plurals name one concept, so they are close (a plural also gets a
  shared "plural" offset): cosine about 0.85;
- a class latent is its super-category latent plus an offset, so words of one
  super-category are nearer to each other (dog / cat) than to unrelated words
  (dog / bus); attribute words of one group (red / blue) likewise;
- detector words the captions never use (``person``, ``stone``, ``houseplant``, ...)
  and tag words (``canine``, ``vehicle``, ``sports equipment``) sit at the concept or
  super-category they name, so word vectors can bridge the vocabulary gap;
- function words and distractors get random vectors.

About 3% of the concept words (never function words) are left out, drawn from the
seed, so that coverage is below 100% as with real vocabularies. Values are rounded
to 4 decimals; the same seed and dimension give the same file on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xmrbench.data.cache import cache_root, materialize
from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.features import LATENT_DIM, FeatureSpace
from xmrbench.data.synthetic.seeds import numpy_rng, python_rng
from xmrbench.data.synthetic.semantics import (
    CATEGORY_TAGS,
    CLASS_TAGS,
    DETECTOR_ATTRIBUTE_WORDS,
    DETECTOR_CLASS_WORDS,
    SCENE_TAGS,
)
from xmrbench.data.synthetic.world import GENERATOR_VERSION
from xmrbench.data.wordvec import WordVectors, read_word_vectors, write_word_vectors

FUNCTION_WORDS: tuple[str, ...] = (
    "a", "an", "the", "and", "with", "of", "in", "on", "at", "to", "by", "is", "are", "there", "photo", "picture",
    "image", "view", "shot", "scene", "snapshot", "several", "some", "sea",
)
N_DISTRACTORS = 400
GAP_P = 0.03
_SCALE = 0.45
_WORD_NOISE = 0.4
_PLURAL_OFFSET = 0.3
_SYLLABLES = ("ka", "lo", "mi", "ru", "ten", "vor", "zi", "pa", "qua", "sel", "dor", "fin", "gra", "hul", "jin",
              "ket", "mon", "nar", "pol", "sut")


def _concept_latents(seed: int) -> dict[str, np.ndarray]:
    """Latent (64,) of every word that names a concept, by priority: class nouns, attribute
    words, scene words, detector words, tags."""
    space = FeatureSpace.build(seed, region_dim=1, global_dim=1)
    out: dict[str, np.ndarray] = {}

    def put(word: str, latent: np.ndarray) -> None:
        for token in word.split():
            out.setdefault(token, latent)

    category = {cat: space.classes[[i for i, c in enumerate(lx.CLASSES) if c.category == cat]].mean(axis=0)
                for cat in lx.CATEGORIES}
    for i, c in enumerate(lx.CLASSES):
        for w in c.nouns:
            put(w, space.classes[i])
    for i, a in enumerate(lx.ATTRIBUTES):
        for w in a.words:
            put(w, space.attributes[i])
    for i, s in enumerate(lx.SCENES):
        for w in s.words:
            put(w, space.scenes[i])
    for cls, word in DETECTOR_CLASS_WORDS.items():
        put(word, space.classes[lx.CLASS_INDEX[cls]])
    for attr, word in DETECTOR_ATTRIBUTE_WORDS.items():
        put(word, space.attributes[lx.ATTRIBUTE_INDEX[attr]])
    for cat, tag in CATEGORY_TAGS.items():
        put(tag, category[cat])
    fine: dict[str, list[int]] = {}
    for cls, tag in CLASS_TAGS.items():
        fine.setdefault(tag, []).append(lx.CLASS_INDEX[cls])
    for tag, members in sorted(fine.items()):
        put(tag, space.classes[members].mean(axis=0))
    for scene, tag in SCENE_TAGS.items():
        put(tag, space.scenes[lx.SCENE_INDEX[scene]])
    return out


def _plurals() -> dict[str, str]:
    """Plural noun -> its singular."""
    return {p: s for c in lx.CLASSES for s, p in zip(c.nouns, c.plurals) if p != s}


def _relation_and_template_words() -> list[str]:
    words: list[str] = []
    for r in lx.RELATIONS:
        for phrase in r.phrases:
            words.extend(phrase.split())
    for s in lx.SCENES:
        for phrase in s.phrases:
            words.extend(phrase.split())
    words.extend(lx.NUMBER_WORDS.values())
    return words


def _distractors(seed: int, taken: set[str]) -> list[str]:
    d = python_rng(seed, "wordvec", "distractors")
    out: list[str] = []
    while len(out) < N_DISTRACTORS:
        word = "".join(_SYLLABLES[d.below(len(_SYLLABLES))] for _ in range(2 + d.below(2)))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def synthetic_word_vectors(*, seed: int = 0, dim: int = 300) -> tuple[list[str], np.ndarray]:
    """The words and (n, dim) float32 vectors of the synthetic GloVe (module docstring)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    latents = _concept_latents(seed)
    plurals = _plurals()
    function = list(dict.fromkeys([*FUNCTION_WORDS, *_relation_and_template_words()]))
    function = [w for w in function if w not in latents and w not in plurals]
    concept_words = [*latents, *[p for p in plurals if p not in latents]]
    gaps = python_rng(seed, "wordvec", "gaps")
    concept_words = [w for w in concept_words if not gaps.chance(GAP_P)]
    distractors = _distractors(seed, set(function) | set(latents) | set(plurals))
    words = [*function, *concept_words, *distractors]

    rng = numpy_rng(seed, "wordvec", "vectors")
    proj = rng.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)
    plural_dir = rng.standard_normal(dim)
    noise = rng.standard_normal((len(words), dim))
    random_part = rng.standard_normal((len(words), dim))
    out = np.empty((len(words), dim))
    for i, w in enumerate(words):
        base = plurals.get(w, w)
        if base in latents:
            vec = latents[base] @ proj + _WORD_NOISE * noise[i]
            if w in plurals:
                vec = vec + _PLURAL_OFFSET * plural_dir
        else:
            vec = random_part[i]
        out[i] = vec
    return words, np.round(_SCALE * out, 4).astype(np.float32)


def write_synthetic_word_vectors(path: str | os.PathLike, *, seed: int = 0, dim: int = 300) -> Path:
    """Write the synthetic word vectors as a GloVe text file (no header)."""
    words, vectors = synthetic_word_vectors(seed=seed, dim=dim)
    return write_word_vectors(path, words, vectors)


def load_synthetic_word_vectors(*, seed: int = 0, dim: int = 300,
                                cache_dir: str | os.PathLike | None = None) -> tuple[WordVectors, Path]:
    """The synthetic GloVe file (generated once into the cache) read back with
    :func:`~xmrbench.data.wordvec.read_word_vectors`; returns (vectors, file path)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    dest = root / "synthetic-wordvec" / f"glove-s{seed}-d{dim}-v{GENERATOR_VERSION}"

    def build(tmp: Path) -> None:
        write_synthetic_word_vectors(tmp / "vectors.txt", seed=seed, dim=dim)

    entry = materialize(dest, build, meta={"seed": seed, "dim": dim, "generator_version": GENERATOR_VERSION})
    path = entry / "vectors.txt"
    return read_word_vectors(path), path
