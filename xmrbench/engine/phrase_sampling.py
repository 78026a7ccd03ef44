"""Training pairs for phrase localization (two-branch paper, Sec. 4.1 and Algorithm 1).

A training split's phrases (``extras["entities"]``, :mod:`xmrbench.data.entities`) are
indexed once (:func:`index_phrases`): for every phrase, its image, its coreference chain
(the entity of its image it names: phrases of different captions naming the same entity
share a chain), its reference region, the proposals that are positive for it and those
that are negative.

- IoU of a proposal with a phrase: the largest IoU with any ground-truth box of the
  phrase's entity, the definition the phrase-localization evaluation scores
  (``xmrbench/engine/tasks.py:phrase``).
- **Reference region**: the paper pairs a phrase with its ground-truth box, whose
  feature it extracts; proposal features are all a dataset in the entities layout
  holds, so the proposal with the highest IoU stands in for the ground truth. A phrase
  whose best proposal has IoU below 0.5 (it cannot be localized at test time) or that has
  no negative proposal is left out of training.
- **Positives** (augmentation, ``pos_iou`` 0.7): proposals with IoU >= 0.7;
  **negatives** (``neg_iou`` 0.3): proposals of the same image with IoU < 0.3.

Mini-batches (Algorithm 1), drawn from a ``numpy`` generator so that a seed and an epoch
fix them:

- :func:`embedding_batches`: the phrases shuffled into sets of ``batch_size``; each
  pairs with its reference region; with ``augment`` each adds one pair with a positive
  proposal drawn at random (step 2); with ``neighbourhood`` (step 3c) every region of the
  batch gets a second phrase of its chain when it has only one, and every phrase a second
  positive region when it has only one. The triplets themselves are chosen on the
  current embeddings by the loss (:mod:`xmrbench.engine.phrase_method`).
- :func:`similarity_batches`: the same sets; each phrase pairs with its reference region,
  with ``augment`` with every positive proposal (step 2), and every positive pair gets one
  negative pair, a negative proposal of the phrase drawn at random (step 3): as many
  negatives as positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmrbench.data.entities import IOU_HIT, EntitiesSplit, iou
from xmrbench.errors import DataError

POS_IOU = 0.7
NEG_IOU = 0.3


@dataclass(frozen=True)
class PhraseIndex:
    """The trainable phrases of a split (``Q`` of them), with proposal rows as global
    indices into the split's ``proposal_feats``."""

    caption: np.ndarray  # (Q,) caption of each phrase
    k: np.ndarray  # (Q,) the phrase's position in its caption
    image: np.ndarray  # (Q,)
    chain: np.ndarray  # (Q,) coreference chain: one id per (image, entity)
    reference: np.ndarray  # (Q,) the proposal standing in for the ground-truth region
    positives: tuple[np.ndarray, ...]  # per phrase: proposals with IoU >= pos_iou
    negatives: tuple[np.ndarray, ...]  # per phrase: proposals of its image with IoU < neg_iou
    texts: tuple[str, ...]
    skipped: int  # phrases left out (no proposal at IoU >= 0.5, or no negative)

    def __len__(self) -> int:
        return len(self.caption)

    def chain_members(self) -> dict[int, np.ndarray]:
        """chain id -> its phrases (indices into the index)."""
        order = np.argsort(self.chain, kind="stable")
        chains, starts = np.unique(self.chain[order], return_index=True)
        return {int(c): part for c, part in zip(chains, np.split(order, starts[1:]), strict=True)}


def index_phrases(ents: EntitiesSplit, *, pos_iou: float = POS_IOU, neg_iou: float = NEG_IOU) -> PhraseIndex:
    """Index the phrases of ``ents`` for training (module docstring)."""
    if not 0 <= neg_iou <= IOU_HIT <= pos_iou <= 1:
        raise ValueError(f"need 0 <= neg_iou ({neg_iou}) <= {IOU_HIT} <= pos_iou ({pos_iou}) <= 1")
    cols: dict[str, list] = {name: [] for name in ("caption", "k", "image", "chain", "reference")}
    positives: list[np.ndarray] = []
    negatives: list[np.ndarray] = []
    texts: list[str] = []
    chains: dict[tuple[int, str], int] = {}
    skipped = 0
    cpi = ents.captions_per_image
    for image in range(ents.n_images):
        lo = int(ents.proposal_offsets[image])
        boxes = np.asarray(ents.proposal_boxes[lo:int(ents.proposal_offsets[image + 1])], dtype=np.float64)
        for caption in range(image * cpi, (image + 1) * cpi):
            for k, phrase in enumerate(ents.phrases[caption]):
                overlap = iou(boxes, ents.phrase_boxes(caption, k)).max(1) if len(boxes) else np.zeros(0)
                neg = np.flatnonzero(overlap < neg_iou)
                if not len(overlap) or overlap.max() < IOU_HIT or not len(neg):
                    skipped += 1
                    continue
                best = int(np.argmax(overlap))
                chain = chains.setdefault((image, phrase.entity), len(chains))
                for name, value in (("caption", caption), ("k", k), ("image", image), ("chain", chain),
                                    ("reference", lo + best)):
                    cols[name].append(value)
                positives.append(lo + np.flatnonzero(overlap >= pos_iou))
                negatives.append(lo + neg)
                texts.append(phrase.text(ents.captions[caption]))
    if not texts:
        raise DataError(f"split {ents.name!r} has no phrase with a proposal at IoU >= {IOU_HIT} and a negative "
                        f"proposal at IoU < {neg_iou}: nothing to train phrase localization on")
    arrays = {name: np.asarray(values, dtype=np.int64) for name, values in cols.items()}
    return PhraseIndex(**arrays, positives=tuple(positives), negatives=tuple(negatives), texts=tuple(texts),
                       skipped=skipped)


@dataclass(frozen=True)
class PhraseBatch:
    """One mini-batch of region-phrase pairs: ``regions`` (R,) proposal rows and
    ``phrases`` (P,) phrase indices, each listed once; ``pairs`` (M, 2) positive pairs as
    (position in ``regions``, position in ``phrases``); for the similarity network
    ``negatives`` (M, 2) one negative pair per positive, in the same coordinates (empty
    for the embedding network, whose negatives the loss picks)."""

    regions: np.ndarray
    phrases: np.ndarray
    pairs: np.ndarray
    negatives: np.ndarray

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)


def _sets(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _pack(pos: list[tuple[int, int]], neg: list[tuple[int, int]] = ()) -> PhraseBatch:
    """(region row, phrase) pairs -> a :class:`PhraseBatch` (each region and phrase once)."""
    pairs = np.asarray(pos, dtype=np.int64).reshape(-1, 2)
    negs = np.asarray(neg, dtype=np.int64).reshape(-1, 2)
    regions, r_inv = np.unique(np.concatenate([pairs[:, 0], negs[:, 0]]), return_inverse=True)
    phrases, p_inv = np.unique(np.concatenate([pairs[:, 1], negs[:, 1]]), return_inverse=True)
    m = len(pairs)
    return PhraseBatch(regions=regions, phrases=phrases,
                       pairs=np.stack([r_inv[:m], p_inv[:m]], 1),
                       negatives=np.stack([r_inv[m:], p_inv[m:]], 1))


def embedding_batches(index: PhraseIndex, batch_size: int, rng: np.random.Generator, *, augment: bool,
                      neighbourhood: bool) -> list[PhraseBatch]:
    """One epoch of the embedding network's mini-batches (Algorithm 1, module docstring)."""
    members = index.chain_members() if neighbourhood else {}
    out = []
    for chunk in _sets(len(index), batch_size, rng):
        pairs = [(int(index.reference[q]), int(q)) for q in chunk]
        if augment:
            for q in chunk:
                others = index.positives[q][index.positives[q] != index.reference[q]]
                if len(others):
                    pairs.append((int(rng.choice(others)), int(q)))
        if neighbourhood:
            pairs = _neighbourhood(index, pairs, members, rng)
        out.append(_pack(pairs))
    return out


def _neighbourhood(index: PhraseIndex, pairs: list[tuple[int, int]], members: dict[int, np.ndarray],
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Step 3c: a second phrase of the same chain for every region with one phrase, a
    second positive region for every phrase with one region (where they exist)."""
    out = list(pairs)
    phrases_of: dict[int, set[int]] = {}
    regions_of: dict[int, set[int]] = {}
    for r, q in pairs:
        phrases_of.setdefault(r, set()).add(q)
        regions_of.setdefault(q, set()).add(r)
    for r, qs in phrases_of.items():
        if len(qs) == 1:
            (q,) = qs
            mates = members[int(index.chain[q])]
            mates = mates[mates != q]
            if len(mates):
                out.append((r, int(rng.choice(mates))))
    for q, rs in regions_of.items():
        if len(rs) == 1:
            candidates = np.union1d(index.positives[q], [index.reference[q]])
            candidates = candidates[~np.isin(candidates, list(rs))]
            if len(candidates):
                out.append((int(rng.choice(candidates)), q))
    return out


def similarity_batches(index: PhraseIndex, batch_size: int, rng: np.random.Generator, *,
                       augment: bool) -> list[PhraseBatch]:
    """One epoch of the similarity network's mini-batches: balanced positive and negative
    pairs (Algorithm 1, module docstring)."""
    out = []
    for chunk in _sets(len(index), batch_size, rng):
        pos: list[tuple[int, int]] = []
        for q in chunk:
            rows = np.union1d(index.positives[q], [index.reference[q]]) if augment else [index.reference[q]]
            pos.extend((int(r), int(q)) for r in rows)
        neg = [(int(rng.choice(index.negatives[q])), q) for _, q in pos]
        out.append(_pack(pos, neg))
    return out
