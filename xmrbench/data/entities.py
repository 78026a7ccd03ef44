"""Phrase-region annotations in the Flickr30K Entities style, with region proposals.

Sentences carry phrase spans ("[a white dog] runs after [two balls]"); each phrase
refers to an entity of its image, and an entity has one or more ground-truth boxes
(a plural phrase may cover several). Phrase localization ranks an image's region
proposals for a phrase and counts a hit when the top proposal overlaps a
ground-truth box with IoU >= 0.5.

On disk, one directory per dataset; per split (see ``docs/formats/entities.md``):

- ``{split}_caps.txt``: captions, ``captions_per_image`` consecutive lines per image
  (as in the precomp layout);
- ``{split}_phrases.jsonl``: one line per caption, a JSON list of phrases
  ``{"start": i, "end": j, "entity": "e1", "type": "animals"}``: tokens ``[i, j)`` of the
  caption split on single spaces, the entity id (per image) and a phrase type;
- ``{split}_entities.jsonl``: one line per image, ``{"size": [w, h], "entities":
  {"e1": [[x0, y0, x1, y1], ...], ...}}``: boxes in the image's pixel frame
  (x0 < x1 <= w, y0 < y1 <= h; the synthetic world uses the unit square);
- ``{split}_proposal_offsets.npy``: (N + 1,) int64, 0 first, non-decreasing: image i
  owns proposal rows ``offsets[i]:offsets[i + 1]``;
- ``{split}_proposal_boxes.npy``: (P, 4) float32 proposal boxes, image by image;
- ``{split}_proposal_feats.npy`` (or ``.h5``): (P, D) float32 proposal features.

Proposal features are memory-mapped (HDF5: read lazily).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmrbench.data.precomp import atomic_write
from xmrbench.errors import DataError

PHRASES_SUFFIX = "_phrases.jsonl"
ENTITIES_SUFFIX = "_entities.jsonl"
OFFSETS_SUFFIX = "_proposal_offsets.npy"
BOXES_SUFFIX = "_proposal_boxes.npy"
FEATS_STEM = "_proposal_feats"
CAPS_SUFFIX = "_caps.txt"
IOU_HIT = 0.5


def iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Intersection over union of every pair of boxes ``[x0, y0, x1, y1]``.

    ``boxes_a`` (A, 4), ``boxes_b`` (B, 4) -> (A, B) float64 (rows = ``boxes_a``).
    Boxes with no area get IoU 0 with everything (no division by zero).
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


@dataclass(frozen=True)
class Phrase:
    """A phrase of a caption: tokens ``[start, end)``, the entity it names, its type."""

    start: int
    end: int
    entity: str
    type: str = "other"

    def text(self, caption: str) -> str:
        return " ".join(caption.split(" ")[self.start : self.end])

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "entity": self.entity, "type": self.type}


@dataclass
class EntitiesSplit:
    """One split: captions with phrases, ground-truth boxes per entity, proposals.

    ``phrases[j]`` lists the phrases of caption ``j``; ``entities[i]`` maps entity ids of
    image ``i`` to (k, 4) float32 boxes; ``sizes`` (N, 2) the image frames;
    ``proposal_offsets`` (N + 1,), ``proposal_boxes`` (P, 4), ``proposal_feats`` (P, D).
    """

    name: str
    captions: list[str]
    captions_per_image: int
    phrases: list[list[Phrase]]
    entities: list[dict[str, np.ndarray]]
    sizes: np.ndarray
    proposal_offsets: np.ndarray
    proposal_boxes: Any
    proposal_feats: Any
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.entities)
        if self.captions_per_image < 1 or len(self.captions) != n * self.captions_per_image:
            raise DataError(f"split {self.name!r}: {len(self.captions)} captions for {n} images, "
                            f"expected {self.captions_per_image} per image")
        if len(self.phrases) != len(self.captions):
            raise DataError(f"split {self.name!r}: {len(self.phrases)} phrase lists for {len(self.captions)} captions")
        problem = offsets_problem(np.asarray(self.proposal_offsets), n, int(self.proposal_boxes.shape[0]))
        if problem:
            raise DataError(f"split {self.name!r}: proposal offsets {problem}")
        if int(self.proposal_feats.shape[0]) != int(self.proposal_boxes.shape[0]):
            raise DataError(f"split {self.name!r}: {self.proposal_feats.shape[0]} proposal features for "
                            f"{self.proposal_boxes.shape[0]} boxes")

    @property
    def n_images(self) -> int:
        return len(self.entities)

    def proposals(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """(P_i, 4) boxes and (P_i, D) float32 features of image ``image``'s proposals."""
        lo, hi = int(self.proposal_offsets[image]), int(self.proposal_offsets[image + 1])
        return (np.asarray(self.proposal_boxes[lo:hi], dtype=np.float32),
                np.asarray(self.proposal_feats[lo:hi], dtype=np.float32))

    def phrase_boxes(self, caption: int, k: int) -> np.ndarray:
        """(m, 4) ground-truth boxes of phrase ``k`` of caption ``caption``."""
        image = caption // self.captions_per_image
        return self.entities[image][self.phrases[caption][k].entity]

    def upper_bound(self, threshold: float = IOU_HIT) -> float:
        """Fraction of phrases with at least one proposal at IoU >= ``threshold`` with a
        ground-truth box: the best accuracy any proposal ranking can reach."""
        hits = total = 0
        for j, phrases in enumerate(self.phrases):
            if not phrases:
                continue
            boxes, _ = self.proposals(j // self.captions_per_image)
            for k in range(len(phrases)):
                total += 1
                hits += bool(len(boxes)) and bool((iou(boxes, self.phrase_boxes(j, k)) >= threshold).any())
        return hits / total if total else 0.0


def offsets_problem(offsets: np.ndarray, n_images: int, n_proposals: int) -> str | None:
    """What is wrong with a proposal offsets array (None if nothing)."""
    if offsets.ndim != 1 or len(offsets) != n_images + 1:
        return f"have shape {offsets.shape}, expected ({n_images + 1},) (one more than images)"
    if offsets.dtype.kind not in "iu":
        return f"have dtype {offsets.dtype}; expected integers"
    if len(offsets) and offsets[0] != 0:
        return f"start at {int(offsets[0])}, expected 0"
    steps = np.diff(offsets)
    if (steps < 0).any():
        return f"decrease at image {int(np.flatnonzero(steps < 0)[0])}"
    if int(offsets[-1]) != n_proposals:
        return f"end at {int(offsets[-1])} but there are {n_proposals} proposals"
    return None


def box_problem(box: Any, size: tuple[float, float] | None = None) -> str | None:
    """What is wrong with one ``[x0, y0, x1, y1]`` box (None if nothing)."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        return f"{box!r} is not [x0, y0, x1, y1]"
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        return f"{box!r} holds NaN or inf"
    if not (x0 < x1 and y0 < y1):
        return f"{box!r} has no area (needs x0 < x1 and y0 < y1)"
    if size is not None and (x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]):
        return f"{box!r} lies outside the image ({size[0]:g} x {size[1]:g})"
    return None


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------




def _lines(path: Path, lines: list[str]) -> None:
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def write_entities(root: str | os.PathLike, splits: dict[str, EntitiesSplit], *, features: str = "npy") -> Path:
    """Write ``splits`` to ``root`` in the entities layout (module docstring).

    ``features="h5"`` writes ``{split}_proposal_feats.h5`` (one proposal per chunk
    row block) instead of ``.npy``. Files are written atomically. Returns ``root``.
    """
    if features not in ("npy", "h5"):
        raise DataError(f"unknown feature format {features!r}; known: npy, h5")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        if not name or "/" in name or name.startswith("."):
            raise DataError(f"invalid split name {name!r}", where=str(root))
        for i, cap in enumerate(split.captions):
            if not cap.strip() or "\n" in cap or "\r" in cap:
                raise DataError(f"caption {i} of split {name!r} is empty or spans lines", where=str(root))
        _lines(root / f"{name}{CAPS_SUFFIX}", list(split.captions))
        _lines(root / f"{name}{PHRASES_SUFFIX}",
               [json.dumps([p.to_json() for p in ps], separators=(",", ":")) for ps in split.phrases])
        ent_lines = []
        for i, ents in enumerate(split.entities):
            doc = {"size": [float(v) for v in np.asarray(split.sizes[i]).tolist()],
                   "entities": {k: np.asarray(v, dtype=np.float64).round(4).tolist() for k, v in ents.items()}}
            ent_lines.append(json.dumps(doc, separators=(",", ":")))
        _lines(root / f"{name}{ENTITIES_SUFFIX}", ent_lines)
        offsets = np.asarray(split.proposal_offsets, dtype=np.int64)
        boxes = np.asarray(split.proposal_boxes, dtype=np.float32)
        atomic_write(root / f"{name}{OFFSETS_SUFFIX}", lambda f, a=offsets: np.save(f, a, allow_pickle=False))
        atomic_write(root / f"{name}{BOXES_SUFFIX}", lambda f, a=boxes: np.save(f, a, allow_pickle=False))
        npy, h5 = root / f"{name}{FEATS_STEM}.npy", root / f"{name}{FEATS_STEM}.h5"
        if features == "npy":
            feats = np.asarray(split.proposal_feats, dtype=np.float32)
            atomic_write(npy, lambda f, a=feats: np.save(f, a, allow_pickle=False))
            h5.unlink(missing_ok=True)
        else:
            from xmrbench.data.hdf5 import write_h5_features

            write_h5_features(h5, split.proposal_feats, dtype=np.float32, chunk_rows=64)
            npy.unlink(missing_ok=True)
    return root


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------


def entities_split_names(root: Path) -> list[str]:
    """Split names of an entities directory: every ``{split}_phrases.jsonl``."""
    names = {p.name[: -len(PHRASES_SUFFIX)] for p in root.glob(f"*{PHRASES_SUFFIX}") if not p.name.startswith(".")}
    rank = {"train": 0, "dev": 1, "val": 1, "test": 2}
    return sorted((n for n in names if n), key=lambda n: (rank.get(n, 3), n))


def _jsonl(path: Path) -> list[Any]:
    from xmrbench.data.precomp import _read_lines

    out = []
    for i, line in enumerate(_read_lines(path)):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"line {i + 1} is not valid JSON ({exc.msg})", where=str(path)) from None
    return out


def parse_entities_line(doc: Any, *, where: str, line: int) -> tuple[tuple[float, float], dict[str, np.ndarray]]:
    """One line of ``{split}_entities.jsonl`` -> (size, entity id -> (k, 4) boxes)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("entities"), dict):
        raise DataError(f'line {line}: expected {{"size": [w, h], "entities": {{...}}}}', where=where)
    size = doc.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in size)):
        raise DataError(f"line {line}: size must be [width, height] > 0, got {size!r}", where=where)
    out: dict[str, np.ndarray] = {}
    for ent, boxes in doc["entities"].items():
        if not isinstance(boxes, list) or not boxes:
            raise DataError(f"line {line}: entity {ent!r} has no boxes", where=where)
        for box in boxes:
            problem = box_problem(box, (float(size[0]), float(size[1])))
            if problem:
                raise DataError(f"line {line}: entity {ent!r}: box {problem}", where=where)
        out[str(ent)] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return (float(size[0]), float(size[1])), out


def parse_phrases_line(items: Any, caption: str, entity_ids: set[str], *, where: str, line: int) -> list[Phrase]:
    """One line of ``{split}_phrases.jsonl`` checked against its caption and image."""
    if not isinstance(items, list):
        raise DataError(f"line {line}: expected a JSON list of phrases", where=where)
    n_tokens = len(caption.split(" "))
    out = []
    for item in items:
        if not isinstance(item, dict) or not {"start", "end", "entity"} <= set(item):
            raise DataError(f"line {line}: a phrase needs start, end and entity, got {item!r}", where=where)
        start, end, ent = item["start"], item["end"], item["entity"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= n_tokens):
            raise DataError(f"line {line}: span [{start}, {end}) is not inside the caption's {n_tokens} tokens",
                            where=where)
        if str(ent) not in entity_ids:
            raise DataError(f"line {line}: phrase refers to entity {ent!r}, which its image does not have",
                            where=where)
        out.append(Phrase(start=start, end=end, entity=str(ent), type=str(item.get("type", "other"))))
    return out


def _feature_path(root: Path, name: str) -> Path:
    found = [root / f"{name}{FEATS_STEM}{ext}" for ext in (".npy", ".h5", ".hdf5")
             if (root / f"{name}{FEATS_STEM}{ext}").is_file()]
    if not found:
        raise DataError(f"no proposal features ({name}{FEATS_STEM}.npy or .h5)", where=str(root))
    if len(found) > 1:
        raise DataError(f"{found[0].name} and {found[1].name} hold the same features; keep one", where=str(root))
    return found[0]


def load_entities_split(root: Path, name: str, *, captions_per_image: int = 5, mmap: bool = True) -> EntitiesSplit:
    """Read one split of an entities directory, checking every cross-reference.

    One-line ``DataError`` naming the file and line for: a missing file, a caption
    count that is not N x ``captions_per_image``, a phrase line count that differs from
    the caption count, a span outside its caption, a phrase naming an entity its image
    lacks, a box without area or outside its image, bad proposal offsets, and proposal
    boxes and features that disagree in length.
    """
    from xmrbench.data.precomp import _read_captions, open_features

    root = Path(root)
    paths = {s: root / f"{name}{s}" for s in (CAPS_SUFFIX, PHRASES_SUFFIX, ENTITIES_SUFFIX, OFFSETS_SUFFIX,
                                                BOXES_SUFFIX)}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"missing file of split {name!r}: {path.name}", where=str(root))
    captions = _read_captions(paths[CAPS_SUFFIX])
    ent_docs = _jsonl(paths[ENTITIES_SUFFIX])
    n = len(ent_docs)
    if len(captions) != n * captions_per_image:
        raise DataError(f"{len(captions)} captions for {n} images (lines of {paths[ENTITIES_SUFFIX].name}); "
                        f"expected {n * captions_per_image}", where=str(paths[CAPS_SUFFIX]))
    sizes, entities = [], []
    for i, doc in enumerate(ent_docs):
        size, ents = parse_entities_line(doc, where=str(paths[ENTITIES_SUFFIX]), line=i + 1)
        sizes.append(size)
        entities.append(ents)
    phrase_docs = _jsonl(paths[PHRASES_SUFFIX])
    if len(phrase_docs) != len(captions):
        raise DataError(f"{len(phrase_docs)} lines for {len(captions)} captions", where=str(paths[PHRASES_SUFFIX]))
    phrases = [
        parse_phrases_line(items, captions[j], set(entities[j // captions_per_image]),
                           where=str(paths[PHRASES_SUFFIX]), line=j + 1)
        for j, items in enumerate(phrase_docs)
    ]
    offsets = np.asarray(open_features(paths[OFFSETS_SUFFIX], mmap=False))
    boxes = open_features(paths[BOXES_SUFFIX], mmap=mmap)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"proposal boxes must be (P, 4), got {tuple(boxes.shape)}", where=str(paths[BOXES_SUFFIX]))
    problem = offsets_problem(offsets, n, int(boxes.shape[0]))
    if problem:
        raise DataError(f"offsets {problem}", where=str(paths[OFFSETS_SUFFIX]))
    feats_path = _feature_path(root, name)
    feats = open_features(feats_path, mmap=mmap)
    if len(feats.shape) != 2 or int(feats.shape[0]) != int(boxes.shape[0]):
        raise DataError(f"shape {tuple(feats.shape)}; expected ({boxes.shape[0]}, D), one row per proposal box",
                        where=str(feats_path))
    return EntitiesSplit(
        name=name, captions=captions, captions_per_image=captions_per_image, phrases=phrases, entities=entities,
        sizes=np.asarray(sizes, dtype=np.float64).reshape(-1, 2), proposal_offsets=offsets.astype(np.int64),
        proposal_boxes=boxes, proposal_feats=feats,
    )


def _existing_splits(root: Path) -> list[str]:
    """The split names of an entities directory; a one-line error if there are none."""
    if not root.is_dir():
        raise DataError("dataset directory does not exist", where=str(root))
    found = entities_split_names(root)
    if not found:
        raise DataError(f"no splits: no *{PHRASES_SUFFIX} files", where=str(root))
    return found


def load_entities(root: str | os.PathLike, *, captions_per_image: int = 5, mmap: bool = True,
                  splits: list[str] | None = None) -> dict[str, EntitiesSplit]:
    """All splits (or ``splits``) of an entities directory, checked (see :func:`load_entities_split`)."""
    root = Path(root)
    found = _existing_splits(root)
    wanted = found if splits is None else list(splits)
    missing = [s for s in wanted if s not in found]
    if missing:
        raise DataError(f"no split(s) {', '.join(missing)}; found: {', '.join(found)}", where=str(root))
    return {s: load_entities_split(root, s, captions_per_image=captions_per_image, mmap=mmap) for s in wanted}


def entities_retrieval_data(root: str | os.PathLike, *, captions_per_image: int = 5, name: str | None = None):
    """An entities directory as a registered dataset (``data.name: entities``).

    Each split is an image-caption split whose ``extras["entities"]`` is the
    :class:`EntitiesSplit` (phrases, ground-truth boxes, proposals): the
    ``test_phrases`` protocol localizes its phrases, and image-sentence retrieval runs
    on the same images with, as each image's global feature, the mean of its
    proposals' features (an image without proposals gets zeros). Splits are read
    when first asked for.
    """
    from functools import partial

    from xmrbench.data.dataset import RetrievalData
    from xmrbench.data.precomp import fingerprint_dir

    root = Path(root)
    found = _existing_splits(root)
    loaders = {s: partial(_entities_retrieval_split, root, s, captions_per_image) for s in found}
    info = {"layout": "entities", "captions_per_image": captions_per_image,
            "image_feature": "mean of the region proposals' features"}
    return RetrievalData(name=name or root.name, fingerprint=fingerprint_dir(root), loaders=loaders, info=info)


def _entities_retrieval_split(root: Path, name: str, captions_per_image: int):
    from xmrbench.data.dataset import Split

    ents = load_entities_split(root, name, captions_per_image=captions_per_image)
    dim = int(ents.proposal_feats.shape[1])
    means = np.zeros((ents.n_images, dim), dtype=np.float32)
    for image in range(ents.n_images):
        lo, hi = int(ents.proposal_offsets[image]), int(ents.proposal_offsets[image + 1])
        if hi > lo:
            means[image] = np.asarray(ents.proposal_feats[lo:hi], dtype=np.float32).mean(0)
    return Split(name=name, captions=list(ents.captions), captions_per_image=captions_per_image,
                 global_feats=means, extras={"entities": ents})
