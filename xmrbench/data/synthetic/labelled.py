"""Labelled cross-modal feature sets in the shapes of ACMR's four datasets (ACMR paper Table 1).

Each instance is a synthetic scene (the world's generative model), an image feature,
a text feature and a label (or labels). What differs between the four is how the
label is defined and what the text is:

| name           | train / test   | labels                                   | image            | text                       |
|----------------|----------------|------------------------------------------|------------------|----------------------------|
| wikipedia      | 1,300 / 1,566  | 10, single: the scene type               | 4096-d (128-d)   | 3000-d tf-idf BoW (10-d LDA) |
| pascal         | 800 / 200      | 20, single: the most salient object      | 4096-d           | 1000-d tf-idf BoW          |
| nus-wide-10k   | 8,000 / 1,000  | 10, multi: super-categories + 2 settings | 4096-d           | 1000-d tf-idf BoW of tags  |
| mscoco         | 66,226 / 16,557| up to 500, multi: classes and attribute-class pairs | 4096-d | 3000-d tf-idf BoW    |

(The "shallow" Wikipedia variant is in brackets: 128-d bag of visual words, 10-d topic
proportions, standing in for SIFT and LDA.) ``size="tiny"`` caps the splits at 200 /
100 instances for tests, with the same dimensions.

Generative model of one instance:

- **scene**: drawn as in the world (:func:`~xmrbench.data.synthetic.world.sample_scene`),
  rejected until it carries a label of the dataset (Wikipedia: one of the first 10
  scene types; Pascal: its most salient object maps to one of the 20 classes). For
  Wikipedia an article's image illustrates its category only loosely: 30% of the
  instances carry another category than the one their image shows;
- **image**: the world's global feature map at 4096-d (non-negative, like VGG fc7);
  shallow: a 128-bin histogram of the scene's 12 most confident region features
  assigned to a fixed random codebook (a bag of visual words);
- **text**: content words (Wikipedia: 10 captions of the scene, an "article"; Pascal
  and MSCOCO: 5 captions; NUS-WIDE: the image's tags and detector words) plus filler
  words from a topic model: one sparse topic per label (Dirichlet 0.1) and a
  background topic; a document mixes its labels' topics (0.45) with a Dirichlet(0.5)
  draw (0.55), gives the background 20%, and draws Poisson(80 / 10 / 5 / 10) filler
  words. The BoW vocabulary is the content words by training document frequency,
  filled up to the dimension with the topic words; features are tf-idf (idf from the
  training split, ``ln((1 + N) / (1 + df)) + 1``), L2-normalised, stored sparse;
- shallow text: the document's proportions over the 10 label topics (what an ideal
  10-topic LDA would recover) mixed with Dirichlet(1) estimation noise (0.5).

Written with :func:`xmrbench.data.labelled.write_labelled` and read back with
:func:`~xmrbench.data.labelled.load_labelled`, so the loader path is the real one.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.data.cache import cache_root, materialize
from xmrbench.data.labelled import LabelledData, LabelledSplit, load_labelled, write_labelled
from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.captions import image_captions
from xmrbench.data.synthetic.features import FeatureSpace, global_features, region_features
from xmrbench.data.synthetic.seeds import numpy_rng, python_rng
from xmrbench.data.synthetic.semantics import detections, image_tags
from xmrbench.data.synthetic.world import GENERATOR_VERSION, sample_scene
from xmrbench.errors import ConfigError


@dataclass(frozen=True)
class LabelledSpec:
    """Shape of one labelled dataset (ACMR paper Table 1)."""

    name: str
    train: int
    test: int
    labels: str  # scene | object | groups | concepts
    image_dim: int
    text_dim: int
    text: str  # document | sentences | tags
    filler_words: float  # mean number of topic words per text
    shallow: tuple[int, int] | None = None  # (image_dim, text_dim) of the shallow variant
    max_labels: int = 0  # concepts: cap on the label set
    image_fidelity: float = 1.0  # P(the image shows its label); else another label's scene


LABELLED_SPECS: dict[str, LabelledSpec] = {
    "wikipedia": LabelledSpec("wikipedia", 1300, 1566, "scene", 4096, 3000, "document", 80.0, shallow=(128, 10),
                              image_fidelity=0.7),
    "pascal": LabelledSpec("pascal", 800, 200, "object", 4096, 1000, "sentences", 10.0),
    "nus-wide-10k": LabelledSpec("nus-wide-10k", 8000, 1000, "groups", 4096, 1000, "tags", 5.0),
    "mscoco": LabelledSpec("mscoco", 66226, 16557, "concepts", 4096, 3000, "sentences", 10.0, max_labels=500),
}
VARIANTS = ("deep", "shallow")
LABELLED_SIZES = ("paper", "tiny")
_TINY = (200, 100)

WIKIPEDIA_SCENES: tuple[str, ...] = tuple(s.name for s in lx.SCENES[:10])
PASCAL_CLASSES: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane",), "bicycle": ("bicycle",), "bird": ("bird", "duck"), "boat": ("boat",),
    "bottle": ("bottle",), "bus": ("bus",), "car": ("car",), "cat": ("cat",), "chair": ("chair",), "cow": ("cow",),
    "diningtable": ("table",), "dog": ("dog",), "horse": ("horse",), "motorbike": ("motorcycle",),
    "person": ("man", "woman", "boy", "girl", "child", "baby", "player"), "pottedplant": ("plant",),
    "sheep": ("sheep",), "sofa": ("sofa",), "train": ("train",), "cup": ("cup", "glass"),
}
"""The 20 Pascal labels (VOC names; "cup" stands in for "tvmonitor") -> world classes."""
_PASCAL_OF = {c: i for i, (_, classes) in enumerate(PASCAL_CLASSES.items()) for c in classes}
INDOOR_SCENES = ("kitchen", "living room", "bedroom", "restaurant")
WATERSIDE_SCENES = ("beach", "harbour")
NUS_LABELS: tuple[str, ...] = (*lx.CATEGORIES, "indoor", "waterside")

_TOPIC_SPARSITY, _BACKGROUND_CONCENTRATION = 0.1, 1.0
_LABEL_WEIGHT, _DOC_CONCENTRATION, _BACKGROUND_WEIGHT = 0.45, 0.5, 0.2
_BOVW_REGIONS = 12  # the most confident regions of an image make its visual words
_LDA_NOISE = 0.5
_CHUNK = 4096  # scenes per chunk of global features (bounded memory)


def labelled_spec(name: str) -> LabelledSpec:
    try:
        return LABELLED_SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown labelled dataset {name!r}; known: {', '.join(LABELLED_SPECS)}") from None


def _sizes(spec: LabelledSpec, size: str) -> tuple[int, int]:
    if size not in LABELLED_SIZES:
        raise ConfigError(f"unknown labelled size {size!r}; known: {', '.join(LABELLED_SIZES)}")
    if size == "tiny":
        return min(spec.train, _TINY[0]), min(spec.test, _TINY[1])
    return spec.train, spec.test


# ---------------------------------------------------------------------------------
# Scenes and labels
# ---------------------------------------------------------------------------------


def _fixed_label(spec: LabelledSpec, scene: dict) -> int | None:
    """Single label of a scene (None: the scene carries no label of the dataset)."""
    if spec.labels == "scene":
        return WIKIPEDIA_SCENES.index(scene["scene"]) if scene["scene"] in WIKIPEDIA_SCENES else None
    top = max(scene["objects"], key=lambda o: o["saliency"])
    return _PASCAL_OF.get(top["class"])


def _group_labels(scene: dict) -> list[int]:
    on = {lx.CATEGORY_INDEX[lx.CLASSES[lx.CLASS_INDEX[o["class"]]].category] for o in scene["objects"]}
    if scene["scene"] in INDOOR_SCENES:
        on.add(len(lx.CATEGORIES))
    if scene["scene"] in WATERSIDE_SCENES:
        on.add(len(lx.CATEGORIES) + 1)
    return sorted(on)


def _concepts(scene: dict) -> list[str]:
    out = []
    for o in scene["objects"]:
        out.append(o["class"])
        out.extend(f"{a} {o['class']}" for a in o["attributes"])
    return out


def _scenes(spec: LabelledSpec, seed: int, split: str, n: int) -> list[dict]:
    d = python_rng(seed, "labelled", spec.name, split, "scenes")
    out: list[dict] = []
    while len(out) < n:
        scene = sample_scene(d)
        if spec.labels in ("scene", "object") and _fixed_label(spec, scene) is None:
            continue
        out.append(scene)
    return out


def _label_set(spec: LabelledSpec, train: list[dict]) -> list[str]:
    if spec.labels == "scene":
        return list(WIKIPEDIA_SCENES)
    if spec.labels == "object":
        return list(PASCAL_CLASSES)
    if spec.labels == "groups":
        return list(NUS_LABELS)
    # concepts: every class, then attribute-class pairs by training frequency (ties by name)
    counts = Counter(c for scene in train for c in set(_concepts(scene)) if " " in c)
    pairs = sorted(counts, key=lambda c: (-counts[c], c))
    return [c.name for c in lx.CLASSES] + pairs[: max(spec.max_labels - len(lx.CLASSES), 0)]


def _labels(spec: LabelledSpec, scenes: list[dict], label_set: list[str], d: Any) -> np.ndarray:
    if spec.labels in ("scene", "object"):
        out = np.array([_fixed_label(spec, s) for s in scenes], dtype=np.int64)
        if spec.image_fidelity < 1.0:
            # an article's image illustrates its category only loosely: some show another one
            for i in range(len(out)):
                if not d.chance(spec.image_fidelity):
                    out[i] = (out[i] + 1 + d.below(len(label_set) - 1)) % len(label_set)
        return out
    out = np.zeros((len(scenes), len(label_set)), dtype=np.uint8)
    index = {name: i for i, name in enumerate(label_set)}
    for row, scene in enumerate(scenes):
        on = _group_labels(scene) if spec.labels == "groups" else [index[c] for c in _concepts(scene) if c in index]
        out[row, on] = 1
    return out


# ---------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------


def _content_tokens(spec: LabelledSpec, scenes: list[dict], seed: int, split: str) -> list[list[str]]:
    d = python_rng(seed, "labelled", spec.name, split, "text")
    out = []
    for scene in scenes:
        if spec.text == "tags":
            words = [w for tag, _ in image_tags(scene, d) for w in tag.split()]
            words += [w for _, det in detections(scene, d) for w in det.split()]
        else:
            n = 10 if spec.text == "document" else 5
            words = [w for cap in image_captions(scene, d, n) for w in cap.split()]
        out.append(words)
    return out


def _label_weights(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """(N, n_labels) rows summing to 1 over each instance's labels."""
    if labels.ndim == 1:
        out = np.zeros((len(labels), n_labels))
        out[np.arange(len(labels)), labels] = 1.0
        return out
    w = labels.astype(np.float64)
    return w / np.maximum(w.sum(axis=1, keepdims=True), 1.0)


def _topic_mix(labels: np.ndarray, n_labels: int, rng: np.random.Generator) -> np.ndarray:
    """(N, n_labels + 1) document-topic proportions; the last topic is the background."""
    n = len(labels)
    doc = rng.dirichlet(np.full(n_labels, _DOC_CONCENTRATION), size=n)
    theta = (1.0 - _BACKGROUND_WEIGHT) * (_LABEL_WEIGHT * _label_weights(labels, n_labels) + (1 - _LABEL_WEIGHT) * doc)
    return np.concatenate([theta, np.full((n, 1), _BACKGROUND_WEIGHT)], axis=1)


def _filler_counts(theta: np.ndarray, topics: np.ndarray, mean_len: float, rng: np.random.Generator) -> np.ndarray:
    """(N, F) filler-word counts: Poisson(mean_len) words from the mixture theta @ topics."""
    lengths = rng.poisson(mean_len, size=len(theta))
    out = np.zeros((len(theta), topics.shape[1]), dtype=np.int64)
    for lo in range(0, len(theta), _CHUNK):
        # rounded so that last-bit BLAS differences cannot move a draw
        probs = np.round(theta[lo : lo + _CHUNK] @ topics, 12)
        probs /= probs.sum(axis=1, keepdims=True)
        out[lo : lo + _CHUNK] = rng.multinomial(lengths[lo : lo + _CHUNK], probs)
    return out


def _tfidf(counts: Any, idf: np.ndarray) -> Any:
    """Rows of ``counts`` (CSR) weighted by ``idf`` and L2-normalised, rounded to 4 decimals."""
    import scipy.sparse as sp

    weighted = sp.csr_matrix(counts, dtype=np.float64).multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    weighted = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ weighted
    weighted = sp.csr_matrix(weighted)
    weighted.data = np.round(weighted.data, 4)
    weighted.eliminate_zeros()
    return weighted.astype(np.float32)


def _bow(
    spec: LabelledSpec,
    content: dict[str, list[list[str]]],
    filler: dict[str, np.ndarray],
) -> dict[str, Any]:
    """tf-idf bag-of-words (sparse) of every split over a ``spec.text_dim`` vocabulary."""
    import scipy.sparse as sp

    df = Counter(w for doc in content["train"] for w in set(doc))
    words = sorted(df, key=lambda w: (-df[w], w))[: spec.text_dim]
    n_fill = spec.text_dim - len(words)
    col = {w: i for i, w in enumerate(words)}
    mats = {}
    for split, docs in content.items():
        rows, cols = [], []
        for r, doc in enumerate(docs):
            for w in doc:
                c = col.get(w)
                if c is not None:
                    rows.append(r)
                    cols.append(c)
        words_part = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(words)))
        fill = sp.csr_matrix(filler[split][:, :n_fill].astype(np.float64))
        mats[split] = sp.hstack([words_part, fill]).tocsr()
    n_train = mats["train"].shape[0]
    dfreq = np.asarray((mats["train"] > 0).sum(axis=0)).ravel()
    idf = np.log((1.0 + n_train) / (1.0 + dfreq)) + 1.0
    return {split: _tfidf(m, idf) for split, m in mats.items()}


# ---------------------------------------------------------------------------------
# Image features
# ---------------------------------------------------------------------------------


def _deep_images(scenes: list[dict], space: FeatureSpace, seed: int, key: str) -> np.ndarray:
    out = np.empty((len(scenes), space.global_map.w2.shape[1]), dtype=np.float32)
    for lo in range(0, len(scenes), _CHUNK):
        out[lo : lo + _CHUNK] = global_features(scenes[lo : lo + _CHUNK], space, seed=seed, split=f"{key}/{lo}")
    return out


def _shallow_images(scenes: list[dict], seed: int, key: str, bins: int) -> np.ndarray:
    """(N, bins) bag of visual words: region features assigned to a fixed random codebook."""
    space = FeatureSpace.build(seed, region_dim=128, global_dim=8)
    rng = numpy_rng(seed, "labelled", "codebook")
    codebook = space.region_map(rng.standard_normal((bins, space.classes.shape[1])))  # (bins, 128)
    out = np.zeros((len(scenes), bins), dtype=np.float64)
    for lo in range(0, len(scenes), _CHUNK):
        part = scenes[lo : lo + _CHUNK]
        feats, _ = region_features(part, space, seed=seed, split=f"{key}/{lo}", regions=_BOVW_REGIONS)
        flat = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
        d2 = (flat**2).sum(1)[:, None] - 2.0 * flat @ codebook.T + (codebook**2).sum(1)[None, :]
        word = np.argmin(np.round(d2, 6), axis=1).reshape(len(part), -1)
        for i in range(len(part)):
            out[lo + i] = np.bincount(word[i], minlength=bins) / word.shape[1]
    return np.round(out, 4).astype(np.float32)


# ---------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------


def generate_labelled(name: str = "wikipedia", *, variant: str = "deep", seed: int = 0,
                      size: str = "paper") -> LabelledData:
    """A labelled feature set in memory (module docstring): splits ``train`` and ``test``."""
    spec = labelled_spec(name)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown labelled variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "shallow" and spec.shallow is None:
        have = ", ".join(n for n, s in LABELLED_SPECS.items() if s.shallow)
        raise ConfigError(f"labelled dataset {name!r} has no shallow variant (only: {have})")
    n_train, n_test = _sizes(spec, size)
    scenes = {"train": _scenes(spec, seed, "train", n_train), "test": _scenes(spec, seed, "test", n_test)}
    label_set = _label_set(spec, scenes["train"])
    labels = {s: _labels(spec, sc, label_set, python_rng(seed, "labelled", spec.name, s, "labels"))
              for s, sc in scenes.items()}

    theta = {s: _topic_mix(labels[s], len(label_set), numpy_rng(seed, "labelled", spec.name, s, "theta"))
             for s in scenes}

    if variant == "deep":
        space = FeatureSpace.build(seed, region_dim=8, global_dim=spec.image_dim)
        images = {s: _deep_images(sc, space, seed, f"labelled/{spec.name}/{s}") for s, sc in scenes.items()}
        content = {s: _content_tokens(spec, sc, seed, s) for s, sc in scenes.items()}
        n_fill = max(spec.text_dim - len({w for doc in content["train"] for w in doc}), 0)
        topic_rng = numpy_rng(seed, "labelled", spec.name, "topics")
        topics = np.concatenate([
            topic_rng.dirichlet(np.full(max(n_fill, 1), _TOPIC_SPARSITY), size=len(label_set)),
            topic_rng.dirichlet(np.full(max(n_fill, 1), _BACKGROUND_CONCENTRATION), size=1),
        ])
        filler = {s: _filler_counts(theta[s], topics, spec.filler_words if n_fill else 0.0,
                                    numpy_rng(seed, "labelled", spec.name, s, "filler")) for s in scenes}
        texts = _bow(spec, content, filler)
        image_desc = f"{spec.image_dim}-d synthetic deep feature (the world's global map; stands in for VGG fc7)"
        text_desc = f"{spec.text_dim}-d tf-idf bag of words ({spec.text})"
    else:
        img_dim, lda_dim = spec.shallow  # type: ignore[misc]
        images = {s: _shallow_images(sc, seed, f"labelled/{spec.name}/{s}/bovw", img_dim) for s, sc in scenes.items()}
        texts = {}
        for s in scenes:
            rng = numpy_rng(seed, "labelled", spec.name, s, "lda")
            part = theta[s][:, :lda_dim]
            part = part / part.sum(axis=1, keepdims=True)
            noisy = (1 - _LDA_NOISE) * part + _LDA_NOISE * rng.dirichlet(np.ones(lda_dim), size=len(part))
            texts[s] = np.round(noisy, 4).astype(np.float32)
        image_desc = f"{img_dim}-d bag of visual words over region features (stands in for SIFT)"
        text_desc = f"{lda_dim}-d topic proportions (stands in for LDA)"
    splits = {
        s: LabelledSplit(name=s, img_feats=images[s], txt_feats=texts[s], labels=labels[s], n_classes=len(label_set))
        for s in scenes
    }
    return LabelledData(
        name=f"synthetic-{spec.name}",
        splits=splits,
        classes=label_set,
        meta={
            "label_kind": "multi" if labels["train"].ndim == 2 else "single",
            "image_feature": image_desc,
            "text_feature": text_desc,
            "source": "synthetic",
            "dataset_shape": spec.name,
            "variant": variant,
            "size": size,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
        },
    )


def write_synthetic_labelled(out_dir: str | os.PathLike, name: str = "wikipedia", *, variant: str = "deep",
                             seed: int = 0, size: str = "paper") -> Path:
    """Generate a labelled set and write it with :func:`~xmrbench.data.labelled.write_labelled`."""
    return write_labelled(out_dir, generate_labelled(name, variant=variant, seed=seed, size=size))


def synthetic_labelled_dir(name: str = "wikipedia", *, variant: str = "deep", seed: int = 0, size: str = "paper",
                           cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory of a synthetic labelled set (see :func:`load_synthetic_labelled`),
    generated on first use; the ``synthetic_labelled`` dataset kind reads it like real data."""
    spec = labelled_spec(name)
    _sizes(spec, size)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown labelled variant {variant!r}; known: {', '.join(VARIANTS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    dest = root / "synthetic-labelled" / f"{name}-{variant}-{size}-s{seed}-v{GENERATOR_VERSION}"

    def build(tmp: Path) -> None:
        write_synthetic_labelled(tmp, name, variant=variant, seed=seed, size=size)

    params = {"name": name, "variant": variant, "seed": seed, "size": size, "generator_version": GENERATOR_VERSION}
    return Path(materialize(dest, build, meta=params))


def load_synthetic_labelled(name: str = "wikipedia", *, variant: str = "deep", seed: int = 0, size: str = "paper",
                            cache_dir: str | os.PathLike | None = None) -> LabelledData:
    """A synthetic labelled set, generated once into the cache and read back with
    :func:`~xmrbench.data.labelled.load_labelled` (the loader real data takes).

    ``name``: wikipedia, pascal, nus-wide-10k, mscoco; ``variant``: deep, or shallow
    (wikipedia only); ``size``: paper (ACMR paper Table 1 sizes) or tiny (<= 200 / 100).
    """
    return load_labelled(synthetic_labelled_dir(name, variant=variant, seed=seed, size=size, cache_dir=cache_dir))
