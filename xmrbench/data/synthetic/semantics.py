"""Machine-made semantics of synthetic images: detector output, image-level tags, labels.

What A3VSE feeds on besides captions (A3VSE paper Sec. 3.1 and 4.2):

- **regional semantics** (``extras["semantics"]``, one string per image): what an
  object detector with attribute heads (Faster R-CNN on Visual Genome) says,
  "attribute class" per detection, sorted by confidence: ``"large dog white cat
  person"``. It misses small objects, confuses classes within a super-category,
  gets attributes wrong, reports clutter that no caption mentions and adds false
  positives. Its vocabulary is only partly shared with the captions: it names some
  concepts with words captions never use (``person``, ``stone``, ``houseplant``,
  ``pan``, ``jet``, ``porcelain``, ``asleep``, ``seated``) and others with one synonym
  only (``couch``, ``bike``, ``kid``, ``gray``, ``large``).
- **image-level tags** (``extras["tags"]``, one list of ``[tag, score]`` per image,
  descending score): the global semantics s_g of A3VSE's unsupervised baseline, in a
  coarser vocabulary of hypernyms and scene categories (``canine``, ``animal``,
  ``vehicle``, ``tableware``, ``living room``), scores in [0, 1], with misses and false
  positives.
- **tag expansion** (``extras["tag_expansion"]``, one dict for the whole world): caption
  word -> the tags it matches, the role WordNet synsets play in the paper (a noun
  maps to its fine tag and its hypernym, a scene word to its scene tag), with
  realistic gaps (some synonyms and some hypernym links are missing).
- **labels**: ``extras["scene_label"]`` (N,) int64, the scene type (single label);
  ``extras["object_labels"]`` (N, n_classes) uint8, multi-hot over the object classes
  present (clutter excluded).

Every draw comes from its own stream (``seeds.python_rng(seed, "semantics", split)``
etc.), so adding these changed none of the bytes of the features or captions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xmrbench.data.synthetic import lexicon as lx
from xmrbench.data.synthetic.seeds import Draw, python_rng

# ---------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------

DETECTOR_CLASS_WORDS: dict[str, str] = {
    "dog": "dog", "cat": "cat", "horse": "horse", "cow": "cow", "sheep": "sheep", "bird": "bird",
    "elephant": "elephant", "duck": "duck",
    "man": "man", "woman": "woman", "boy": "boy", "girl": "girl", "child": "kid", "baby": "baby",
    "player": "person",
    "car": "car", "bus": "bus", "bicycle": "bike", "motorcycle": "motorcycle", "truck": "truck", "boat": "boat",
    "train": "train", "airplane": "jet",
    "table": "table", "chair": "chair", "sofa": "couch", "bed": "bed", "bench": "bench", "desk": "desk",
    "shelf": "shelf", "lamp": "lamp",
    "apple": "apple", "banana": "banana", "pizza": "pizza", "sandwich": "sandwich", "cake": "cake",
    "donut": "doughnut", "carrot": "carrot",
    "tree": "tree", "flower": "flower", "rock": "stone", "bush": "bush", "mountain": "mountain", "cloud": "cloud",
    "plant": "houseplant",
    "ball": "ball", "kite": "kite", "surfboard": "surfboard", "skateboard": "skateboard", "frisbee": "frisbee",
    "racket": "racket", "helmet": "helmet",
    "cup": "cup", "plate": "plate", "bowl": "bowl", "bottle": "bottle", "knife": "knife", "fork": "fork",
    "spoon": "spoon", "pot": "pan", "glass": "glass",
}
"""Object class -> the detector's word for it (some differ from every caption word)."""

DETECTOR_ATTRIBUTE_WORDS: dict[str, str] = {
    "red": "red", "blue": "blue", "green": "green", "yellow": "yellow", "white": "white", "black": "black",
    "brown": "brown", "grey": "gray",
    "big": "large", "small": "small", "tall": "tall", "long": "long",
    "wooden": "wood", "metal": "metal", "plastic": "plastic", "ceramic": "porcelain", "leather": "leather",
    "old": "old", "wet": "wet", "dirty": "dirty", "empty": "empty", "sliced": "sliced", "sleeping": "asleep",
    "running": "running", "sitting": "seated", "parked": "parked",
}
"""Attribute -> the detector's word for it."""

CATEGORY_TAGS: dict[str, str] = {
    "animals": "animal", "people": "person", "vehicles": "vehicle", "furniture": "furniture", "food": "food",
    "nature": "nature", "sports": "sports equipment", "kitchenware": "tableware",
}
"""Super-category -> its hypernym tag."""

CLASS_TAGS: dict[str, str] = {
    "dog": "canine", "cat": "feline", "horse": "equine", "cow": "cattle", "sheep": "livestock",
    "bird": "bird", "elephant": "pachyderm", "duck": "waterfowl",
    "man": "adult", "woman": "adult", "boy": "youth", "girl": "youth", "child": "youth", "baby": "infant",
    "player": "athlete",
    "car": "motor vehicle", "bus": "public transport", "bicycle": "cycle", "motorcycle": "cycle",
    "truck": "motor vehicle", "boat": "watercraft", "train": "public transport", "airplane": "aircraft",
    "table": "table", "chair": "seat", "sofa": "seat", "bench": "seat", "bed": "bed",
    "apple": "fruit", "banana": "fruit", "pizza": "dish", "sandwich": "dish", "cake": "dessert",
    "donut": "dessert", "carrot": "vegetable",
    "tree": "tree", "flower": "flower", "plant": "flower", "mountain": "landscape", "cloud": "sky",
    "ball": "ball", "kite": "toy", "frisbee": "toy", "surfboard": "board", "skateboard": "board",
    "cup": "drinkware", "glass": "drinkware", "bottle": "drinkware", "knife": "cutlery", "fork": "cutlery",
    "spoon": "cutlery", "plate": "crockery", "bowl": "crockery",
}
"""Object class -> a finer tag (several classes share one; classes not listed have only
their hypernym tag: the tagger's vocabulary is coarser than the detector's)."""

SCENE_TAGS: dict[str, str] = {
    "beach": "beach", "street": "street", "kitchen": "kitchen", "park": "park", "farm": "farm",
    "living room": "living room", "bedroom": "bedroom", "field": "field", "harbour": "harbor",
    "restaurant": "restaurant", "station": "train station", "airport": "airport",
}
"""Scene type -> its scene-category tag (Places-style)."""

ALL_TAGS: tuple[str, ...] = tuple(
    sorted({*CATEGORY_TAGS.values(), *CLASS_TAGS.values(), *SCENE_TAGS.values()})
)

# ---------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------

_DETECT_BASE, _DETECT_SALIENCY = 0.35, 0.6  # P(detect) = 0.35 + 0.6 * saliency
_CONFUSE_P = 0.15  # a detection names another class of the same super-category
_ATTRIBUTE_REPORT_P = 0.6
_ATTRIBUTE_WRONG_P = 0.15
_CLUTTER_DETECT_P = 0.5
_FALSE_POSITIVE_P = 0.3
_MAX_DETECTIONS = 10

_TAG_CLASS_P = 0.8  # a present class gets its fine tag
_TAG_CATEGORY_P = 0.9
_TAG_SCENE_P = 0.85
_TAG_FALSE_MAX = 2
_DROP_LINK_P = 0.15  # a word -> tag link missing from the expansion dictionary
_DROP_WORD_P = 0.08  # a caption word missing from the dictionary altogether

_CATEGORY_CLASSES: dict[str, tuple[int, ...]] = {
    cat: tuple(i for i, c in enumerate(lx.CLASSES) if c.category == cat) for cat in lx.CATEGORIES
}


def _clip01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


# ---------------------------------------------------------------------------------
# Regional semantics
# ---------------------------------------------------------------------------------


def _wrong_attribute(d: Draw, cls: str, attr: str) -> str:
    group = lx.ATTRIBUTES[lx.ATTRIBUTE_INDEX[attr]].group
    others = [lx.ATTRIBUTES[k].name for k in lx.attributes_for(cls).get(group, ()) if lx.ATTRIBUTES[k].name != attr]
    return d.pick(others) if others else attr


def detections(scene: dict, d: Draw) -> list[tuple[float, str]]:
    """``(confidence, "attribute class")`` detections of one scene, before sorting."""
    out: list[tuple[float, str]] = []
    for obj in scene["objects"]:
        sal = float(obj["saliency"])
        if not d.chance(_DETECT_BASE + _DETECT_SALIENCY * sal):
            continue
        cls = obj["class"]
        conf = 0.45 + 0.45 * sal + d.uniform(-0.1, 0.1)
        if d.chance(_CONFUSE_P):
            same = [lx.CLASSES[k].name for k in _CATEGORY_CLASSES[lx.CLASSES[lx.CLASS_INDEX[cls]].category]
                    if lx.CLASSES[k].name != cls]
            if same:
                cls, conf = d.pick(same), conf - 0.12
        words = [DETECTOR_CLASS_WORDS[cls]]
        reported = [a for a in obj["attributes"] if d.chance(_ATTRIBUTE_REPORT_P)]
        if reported:
            attr = reported[0]
            if d.chance(_ATTRIBUTE_WRONG_P):
                attr = _wrong_attribute(d, cls, attr)
            words.insert(0, DETECTOR_ATTRIBUTE_WORDS[attr])
        out.append((_clip01(conf), " ".join(words)))
    for item in scene["clutter"]:
        if d.chance(_CLUTTER_DETECT_P):
            out.append((_clip01(d.uniform(0.3, 0.55)), DETECTOR_CLASS_WORDS[item["class"]]))
    if d.chance(_FALSE_POSITIVE_P):
        out.append((_clip01(d.uniform(0.2, 0.45)), DETECTOR_CLASS_WORDS[lx.CLASSES[d.below(len(lx.CLASSES))].name]))
    if not out:  # the detector always fires on the most salient object
        top = max(scene["objects"], key=lambda o: o["saliency"])
        out.append((0.3, DETECTOR_CLASS_WORDS[top["class"]]))
    return out


def regional_semantics(scenes: list[dict], *, seed: int, split: str) -> list[str]:
    """One detector-style string per image: "attribute class" detections, most confident first."""
    d = python_rng(seed, "semantics", split)
    out = []
    for scene in scenes:
        dets = detections(scene, d)
        # most confident first; ties keep detection order (stable sort)
        ranked = sorted(range(len(dets)), key=lambda i: -round(dets[i][0], 6))[:_MAX_DETECTIONS]
        out.append(" ".join(dets[i][1] for i in ranked))
    return out


# ---------------------------------------------------------------------------------
# Image-level tags
# ---------------------------------------------------------------------------------


def image_tags(scene: dict, d: Draw) -> list[list]:
    """``[[tag, score], ...]`` of one scene, descending score (ties by tag)."""
    scores: dict[str, float] = {}

    def put(tag: str, score: float) -> None:
        scores[tag] = max(scores.get(tag, 0.0), round(_clip01(score), 3))

    best: dict[str, float] = {}
    for obj in scene["objects"]:
        best[obj["class"]] = max(best.get(obj["class"], 0.0), float(obj["saliency"]))
    categories: dict[str, float] = {}
    for cls, sal in best.items():
        cat = lx.CLASSES[lx.CLASS_INDEX[cls]].category
        categories[cat] = max(categories.get(cat, 0.0), sal)
        fine = CLASS_TAGS.get(cls)
        if fine is not None and d.chance(_TAG_CLASS_P):
            put(fine, 0.35 + 0.5 * sal + d.uniform(-0.1, 0.1))
    for cat, sal in categories.items():
        if d.chance(_TAG_CATEGORY_P):
            put(CATEGORY_TAGS[cat], 0.5 + 0.45 * sal + d.uniform(-0.08, 0.08))
    if d.chance(_TAG_SCENE_P):
        put(SCENE_TAGS[scene["scene"]], 0.55 + d.uniform(-0.2, 0.35))
    for _ in range(d.below(_TAG_FALSE_MAX + 1)):
        tag = ALL_TAGS[d.below(len(ALL_TAGS))]
        if tag not in scores:
            put(tag, d.uniform(0.02, 0.35))
    return [[tag, score] for tag, score in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def split_tags(scenes: list[dict], *, seed: int, split: str) -> list[list[list]]:
    """Image-level tags of every scene of a split (see :func:`image_tags`)."""
    d = python_rng(seed, "tags", split)
    return [image_tags(scene, d) for scene in scenes]


def tag_expansion(seed: int) -> dict[str, list[str]]:
    """Caption word -> the tags it matches (synonyms and hypernyms, with gaps).

    A class noun (singular or plural) maps to its class's fine tag and its
    super-category tag; a scene word (the last word of a multi-word one, "room" for
    "living room") to its scene tag. Each link is missing with probability 0.15 and a
    word altogether with probability 0.08, from the world's ``tag_expansion`` stream;
    attribute words match no tag (the tagger has no attributes).
    """
    d = python_rng(seed, "tag_expansion")
    out: dict[str, list[str]] = {}

    def add(word: str, tags: list[str]) -> None:
        if d.chance(_DROP_WORD_P):
            return
        kept = [t for t in tags if not d.chance(_DROP_LINK_P)]
        if kept:
            merged = out.setdefault(word, [])
            merged.extend(t for t in kept if t not in merged)

    for cls in lx.CLASSES:
        tags = [t for t in (CLASS_TAGS.get(cls.name), CATEGORY_TAGS[cls.category]) if t is not None]
        for word in (*cls.nouns, *cls.plurals):
            add(word, tags)
    for scene in lx.SCENES:
        for word in scene.words:
            add(word.split()[-1], [SCENE_TAGS[scene.name]])
    return {w: out[w] for w in sorted(out)}


# ---------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------


def scene_labels(scenes: list[dict]) -> np.ndarray:
    """(N,) int64: the scene-type index of every image (``lexicon.SCENES`` order)."""
    return np.array([lx.SCENE_INDEX[s["scene"]] for s in scenes], dtype=np.int64)


def object_labels(scenes: list[dict]) -> np.ndarray:
    """(N, n_classes) uint8 multi-hot: which object classes each image shows (clutter excluded)."""
    out = np.zeros((len(scenes), len(lx.CLASSES)), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        for obj in scene["objects"]:
            out[i, lx.CLASS_INDEX[obj["class"]]] = 1
    return out


def semantic_extras(scenes: list[dict], *, seed: int, split: str) -> dict[str, Any]:
    """The extras of one split: semantics, tags, tag_expansion, scene_label, object_labels."""
    return {
        "semantics": regional_semantics(scenes, seed=seed, split=split),
        "tags": split_tags(scenes, seed=seed, split=split),
        "tag_expansion": tag_expansion(seed),
        "scene_label": scene_labels(scenes),
        "object_labels": object_labels(scenes),
    }
