"""Phrase-region annotations and region proposals for the synthetic world.

For the images and captions of a world (train, dev, test), in the Flickr30K Entities
style (``xmrbench/data/entities.py``):

- **entities**: every object class of a scene is an entity (id = the class name) whose
  boxes are the boxes of its objects (two dogs: two boxes); boxes live in the unit
  square (image size ``[1, 1]``);
- **phrases**: the noun phrases of each caption, found with the caption grammar
  (determiner, pre-noun attribute words, the class noun, post-noun state words:
  "a large wet puppy", "two dogs", "a man sitting"), each linked to the entity of its
  noun's class; a type from the class's super-category (people, animals, vehicles,
  other);
- **proposals**: 20..200 boxes per image (uniform count), as a proposal generator
  gives them: 2..8 around every object with jitter scales from tight to sloppy (so
  IoU with the object spreads from about 0.95 down to below 0.3), 1..2 around every
  clutter item, and random boxes for the rest; ordered by an objectness score
  (object proposals score higher, more so when tight). A proposal's feature is the
  world's region map of ``a * semantics + (1 - a)/2 * scene + nuisance + noise`` with
  ``a = 0.4 + 0.6 * IoU`` with the object it was drawn around (background proposals:
  ``scene + 0.6 * noise``), so features live in the same space as the world's region
  features.

Written with :func:`xmrbench.data.entities.write_entities` and read back with
:func:`~xmrbench.data.entities.load_entities`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xmrbench.data.cache import cache_root, materialize
from xmrbench.data.entities import EntitiesSplit, Phrase, load_entities, write_entities
from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.captions import write_captions
from xmrbench.data.synthetic.features import LATENT_DIM, FeatureSpace, _iou, _jitter, _Objects, _semantics
from xmrbench.data.synthetic.seeds import numpy_rng, python_rng
from xmrbench.data.synthetic.world import (
    CAPTIONS_PER_IMAGE,
    GENERATOR_VERSION,
    check_params,
    split_scenes,
)

MIN_PROPOSALS, MAX_PROPOSALS = 20, 200
ENTITY_SPLITS = ("train", "dev", "test")
DETERMINERS = frozenset({"a", "an", "the", "two", "three", "four", "five", "six", "several", "some"})
_PHRASE_TYPES = {"people": "people", "animals": "animals", "vehicles": "vehicles"}
_JITTER_SCALES = (0.03, 0.08, 0.15, 0.25, 0.4, 0.6)
_CLASS_WORDS = {w: c.split(":", 1)[1] for w, c in lx.SURFACE_CONCEPTS.items() if c.startswith("class:")}
_ATTR_WORDS = {w: c.split(":", 1)[1] for w, c in lx.SURFACE_CONCEPTS.items() if c.startswith("attr:")}
_POST_WORDS = {w for w, a in _ATTR_WORDS.items() if lx.ATTRIBUTES[lx.ATTRIBUTE_INDEX[a]].placement != "pre"}


def caption_phrases(caption: str) -> list[tuple[int, int, str]]:
    """``(start, end, class)`` noun phrases of a synthetic caption (tokens ``[start, end)``).

    A phrase ends at a class noun (plus any post-noun state words) and starts at the
    determiner before its attribute words.
    """
    tokens = caption.split(" ")
    out = []
    k = 0
    while k < len(tokens):
        cls = _CLASS_WORDS.get(tokens[k])
        if cls is None:
            k += 1
            continue
        start = k
        while start > 0 and tokens[start - 1] in _ATTR_WORDS:
            start -= 1
        if start > 0 and tokens[start - 1] in DETERMINERS:
            start -= 1
        end = k + 1
        while end < len(tokens) and tokens[end] in _POST_WORDS:
            end += 1
        out.append((start, end, cls))
        k = end
    return out


def scene_entities(scene: dict) -> dict[str, np.ndarray]:
    """Entity id (class name) -> (k, 4) float32 boxes of the scene's objects of that class."""
    out: dict[str, list] = {}
    for obj in scene["objects"]:
        out.setdefault(obj["class"], []).append(obj["box"])
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _phrase_type(cls: str) -> str:
    return _PHRASE_TYPES.get(lx.CLASSES[lx.CLASS_INDEX[cls]].category, "other")


def _proposals(
    scenes: list[dict], space: FeatureSpace, *, seed: int, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (N + 1,), boxes (P, 4) float32 and features (P, D) float32 of a split."""
    d = python_rng(seed, "proposals", split)
    rng = numpy_rng(seed, "proposals", split)
    objs = _Objects.collect(scenes, "objects")
    clut = _Objects.collect(scenes, "clutter")
    obj_rows = np.split(np.arange(len(objs.cls)), np.cumsum(np.bincount(objs.image, minlength=len(scenes)))[:-1])
    clu_rows = np.split(np.arange(len(clut.cls)), np.cumsum(np.bincount(clut.image, minlength=len(scenes)))[:-1])
    src_box, src_scale, src_kind, src_row, image_of = [], [], [], [], []
    for i in range(len(scenes)):
        n_total = MIN_PROPOSALS + d.below(MAX_PROPOSALS - MIN_PROPOSALS + 1)
        picks = []
        for r in obj_rows[i]:
            for _ in range(2 + d.below(7)):
                picks.append((0, int(r), _JITTER_SCALES[d.below(len(_JITTER_SCALES))]))
        for r in clu_rows[i]:
            for _ in range(1 + d.below(2)):
                picks.append((1, int(r), 0.1))
        picks = picks[:n_total]
        picks += [(2, -1, 0.0)] * (n_total - len(picks))
        for kind, row, scale in picks:
            src_kind.append(kind)
            src_row.append(row)
            src_scale.append(scale)
            src_box.append(objs.box[row] if kind == 0 else clut.box[row] if kind == 1 else np.zeros(4))
            image_of.append(i)
    kind = np.array(src_kind, dtype=np.int64)
    row = np.array(src_row, dtype=np.int64)
    image = np.array(image_of, dtype=np.int64)
    boxes = _jitter(rng, np.array(src_box, dtype=np.float64).reshape(-1, 4), np.array(src_scale))
    bg = kind == 2
    xy = rng.random((int(bg.sum()), 2)) * 0.8
    wh = 0.05 + rng.random((int(bg.sum()), 2)) * 0.85
    boxes[bg] = np.concatenate([xy, np.minimum(xy + wh, 1.0)], axis=1)
    boxes = np.round(boxes, 3)
    own = np.zeros(len(kind))
    is_obj = kind == 0
    is_clu = kind == 1
    own[is_obj] = _iou(boxes[is_obj], objs.box[row[is_obj]])
    own[is_clu] = _iou(boxes[is_clu], clut.box[row[is_clu]])
    score = np.where(is_obj, 0.5 + 0.4 * own, np.where(is_clu, 0.35 + 0.3 * own, 0.0)) + 0.25 * rng.random(len(kind))
    order = np.lexsort((-score, image))  # image by image, most object-like first
    kind, row, image, boxes, own = kind[order], row[order], image[order], boxes[order], own[order]

    a = 0.4 + 0.6 * own
    sem = np.zeros((len(kind), LATENT_DIM))
    sem[kind == 0] = _semantics(space, objs)[row[kind == 0]]
    sem[kind == 1] = space.classes[clut.cls[row[kind == 1]]]
    sem_coef = np.where(kind == 0, a, np.where(kind == 1, 0.8 * a, 0.0))[:, None]
    scene_coef = np.where(kind == 2, 1.0, 0.5 * (1.0 - a))[:, None]
    noise_coef = np.where(kind == 2, 0.6, 0.35)[:, None]
    scene_idx = np.array([lx.SCENE_INDEX[s["scene"]] for s in scenes], dtype=np.int64)
    nuisance = numpy_rng(seed, "proposal-nuisance", split).standard_normal((len(scenes), LATENT_DIM)) * 0.25
    noise = numpy_rng(seed, "proposal-noise", split).standard_normal((len(kind), LATENT_DIM))
    z = sem_coef * sem + scene_coef * space.scenes[scene_idx[image]] + nuisance[image] + noise_coef * noise
    feats = np.round(space.region_map(z), 4).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(image, minlength=len(scenes)))]).astype(np.int64)
    return offsets, boxes.astype(np.float32), feats


def generate_entities(*, size: str = "tiny", seed: int = 0, region_dim: int = 128) -> dict[str, EntitiesSplit]:
    """Entities splits (train, dev, test) of the world ``(size, seed)``: the world's
    scenes and captions with phrases, ground-truth boxes and 20..200 proposals each."""
    spec = check_params(size=size, seed=seed, region_dim=region_dim, global_dim=1, regions=1)
    space = FeatureSpace.build(seed, region_dim=region_dim, global_dim=8)
    out = {}
    for split in ENTITY_SPLITS:
        source = "testall" if split == "test" else split
        scenes = split_scenes(seed, source, spec)
        captions = write_captions(scenes, seed=seed, split=source, per_image=CAPTIONS_PER_IMAGE)
        if split == "test":  # the first fold of testall, as in the world
            scenes, captions = scenes[: spec.n_test], captions[: spec.n_test * CAPTIONS_PER_IMAGE]
        entities = [scene_entities(s) for s in scenes]
        phrases = []
        for j, cap in enumerate(captions):
            have = entities[j // CAPTIONS_PER_IMAGE]
            phrases.append([Phrase(start=a, end=b, entity=cls, type=_phrase_type(cls))
                            for a, b, cls in caption_phrases(cap) if cls in have])
        offsets, boxes, feats = _proposals(scenes, space, seed=seed, split=split)
        out[split] = EntitiesSplit(
            name=split, captions=captions, captions_per_image=CAPTIONS_PER_IMAGE, phrases=phrases,
            entities=entities, sizes=np.ones((len(scenes), 2)), proposal_offsets=offsets, proposal_boxes=boxes,
            proposal_feats=feats,
        )
    return out


def write_synthetic_entities(out_dir: str | os.PathLike, *, size: str = "tiny", seed: int = 0,
                             region_dim: int = 128) -> Path:
    """Generate the entities splits and write them with :func:`~xmrbench.data.entities.write_entities`."""
    return write_entities(out_dir, generate_entities(size=size, seed=seed, region_dim=region_dim))


def synthetic_entities_dir(*, size: str = "tiny", seed: int = 0, region_dim: int = 128,
                           cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of the synthetic entities splits in the entities layout, generated
    once into the cache."""
    check_params(size=size, seed=seed, region_dim=region_dim, global_dim=1, regions=1)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    dest = root / "synthetic-entities" / f"{size}-s{seed}-r{region_dim}-v{GENERATOR_VERSION}"

    def build(tmp: Path) -> None:
        write_synthetic_entities(tmp, size=size, seed=seed, region_dim=region_dim)

    params = {"size": size, "seed": seed, "region_dim": region_dim, "generator_version": GENERATOR_VERSION}
    return Path(materialize(dest, build, meta=params))


def load_synthetic_entities(*, size: str = "tiny", seed: int = 0, region_dim: int = 128,
                            cache_dir: str | os.PathLike | None = None) -> dict[str, EntitiesSplit]:
    """The synthetic entities splits, generated once into the cache and read back with
    :func:`~xmrbench.data.entities.load_entities`."""
    return load_entities(synthetic_entities_dir(size=size, seed=seed, region_dim=region_dim, cache_dir=cache_dir))
