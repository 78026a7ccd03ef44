"""Evaluation tasks: what a protocol measures on its split, by ``Protocol.task``.

- ``image_text``: image-to-sentence and sentence-to-image retrieval, a caption
  relevant to its own image only (R@K, medr, meanr, rsum; folds averaged); protocol
  ``test_r10_fraction`` adds R@10 / 100 as fractions (ACMR Table 4's scale);
- ``label``: label-based cross-modal retrieval (ACMR): every image queries every
  text and the reverse, an item relevant when it shares a class with the query;
  mAP over the whole ranked list (protocol ``test_labels``) or the released ACMR
  code's mAP@50 (``test_labels_map50``, ``Protocol.map_at``), under distinct keys,
  and the precision-scope points ``i2t_p50`` ... ``t2i_p1000`` up to the gallery size
  (``core/metrics/labels.py:label_metrics``, ties pessimistic). The split's
  ``extras["labels"]`` holds one class per image, or a multi-hot row; each caption
  carries its image's labels;
- ``sentence``: sentence-to-sentence retrieval (two-branch Table 4): every caption
  queries the other captions, relevant when they describe the same image (s2s R@K);
- ``phrase``: phrase localization (two-branch Table 1): every phrase of a caption
  ranks its image's region proposals; found at K when a proposal with IoU >= 0.5
  with a ground-truth box of the phrase is in the top K (ties count against it).

The engine picks the evaluator from :data:`TASKS`; a new task is a function with
the signature of :func:`image_text` and one line in the registry. A task that scores
images against captions hands its similarity matrices to ``on_sims`` (one per fold) when
given: the runner keeps an ensemble member's matrices so that the ensemble averages them
instead of scoring the member again (``xmrbench/runner/kept_sims.py``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.labels import label_metrics, relevance_from_labels
from xmrbench.core.metrics.phrase import correct_rank
from xmrbench.core.metrics.protocols import PROTOCOLS, Protocol
from xmrbench.core.metrics.sentence import sentence_metrics
from xmrbench.core.models.base import Padded, RetrievalModel
from xmrbench.engine.evaluate import encode, evaluate_split, similarity_matrix
from xmrbench.engine.inputs import PreparedData, PreparedSplit
from xmrbench.errors import DataError, TrainingError
from xmrbench.registry import Registry

Metrics = dict[str, float]
Ranks = dict[str, list[int]]
TaskEvaluator = Callable[..., tuple[Metrics, Ranks]]
SimsSink = Callable[[list[torch.Tensor]], None]


def image_text(model: RetrievalModel, split: PreparedSplit, protocol: Protocol, *, device: torch.device,
               batch_size: int, block_images: int, sentence: bool,
               on_sims: SimsSink | None = None) -> tuple[Metrics, Ranks]:
    """Image-sentence retrieval metrics (and, with ``sentence``, s2s recalls too; with the
    protocol's ``r10_fraction``, R@10 / 100 of each direction and their mean too)."""
    metrics, ranks = evaluate_split(model, split, folds=protocol.folds, device=device, batch_size=batch_size,
                                    block_images=block_images, sentence=sentence, on_sims=on_sims)
    if protocol.r10_fraction:
        metrics.update(r10_fractions(metrics))
    return metrics, ranks


def r10_fractions(metrics: Metrics) -> Metrics:
    """``i2t_r10_frac``, ``t2i_r10_frac``, ``avg_r10_frac``: R@10 / 100 of each direction of
    ``metrics`` (recalls in percent) and their mean."""
    i2t, t2i = metrics[K.I2T_R10] / 100.0, metrics[K.T2I_R10] / 100.0
    return {K.I2T_R10_FRAC: i2t, K.T2I_R10_FRAC: t2i, K.AVG_R10_FRAC: (i2t + t2i) / 2.0}


def label(model: RetrievalModel, split: PreparedSplit, protocol: Protocol, *, device: torch.device,
          batch_size: int, block_images: int, sentence: bool,
          on_sims: SimsSink | None = None) -> tuple[Metrics, Ranks]:
    """Image-query and text-query mAP by label agreement (whole list, or mAP@50 where the
    protocol's ``map_at`` is 50), their mean, and precision at K = 50, 100, ..., 1000
    for K up to the gallery size of each direction (:func:`label_metrics`); with the
    whole-list mAP also its chance level on this split, ``i2t_map_chance``,
    ``t2i_map_chance``, ``avg_map_chance`` (the expected mAP of a random ranking, from
    the labels: :func:`xmrbench.core.metrics.labels.chance_label_map`)."""
    labels = split.split.extras.get("labels")
    if labels is None:
        raise DataError(f"split {split.name!r} has no labels (extras 'labels'); protocol {protocol.name!r} needs them")
    img_labels = torch.as_tensor(np.asarray(labels))
    if len(img_labels) != split.n_images:
        raise DataError(f"split {split.name!r}: {len(img_labels)} labels for {split.n_images} images")
    txt_labels = img_labels[torch.from_numpy(split.caption_image())]
    enc = encode(model, split, device=device, batch_size=batch_size)
    sims = similarity_matrix(model, enc, block_images=block_images)
    if on_sims is not None:
        on_sims([sims])
    rel = relevance_from_labels(img_labels, txt_labels)
    metrics = label_metrics(sims, rel, maps=(protocol.map_at,))
    if protocol.map_at is None:  # the whole-list mAP's chance level on this split, for the gate's learning bar
        from xmrbench.core.metrics.labels import chance_label_map

        metrics.update(chance_label_map(rel))
    return metrics, {}


def sentence(model: RetrievalModel, split: PreparedSplit, protocol: Protocol, *, device: torch.device,
             batch_size: int, block_images: int, sentence: bool,
             on_sims: SimsSink | None = None) -> tuple[Metrics, Ranks]:
    """Sentence-to-sentence recalls over the split's captions (no image-text matrix: ``on_sims`` is not called)."""
    enc = encode(model, split, device=device, batch_size=batch_size)
    if isinstance(enc.txt_emb, Padded):
        raise TrainingError("sentence-to-sentence retrieval needs one embedding per caption")
    txt = enc.txt_emb.float().cpu()
    return sentence_metrics(txt @ txt.t(), captions_per_image=split.captions_per_image), {}


def evaluate_protocols(
    model: RetrievalModel,
    prepared: PreparedData,
    protocols: tuple[str, ...],
    *,
    device: torch.device,
    batch_size: int,
    block_images: int,
    sentence: bool,
    seconds: dict[str, float] | None = None,
    on_sims: Callable[[str, list[torch.Tensor]], None] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[int]]]]:
    """Metrics and per-query ranks of every protocol, each by its task's evaluator;
    ``seconds``, when given, receives each protocol's wall-clock time (encoding, the
    similarity matrices and the ranking: ADAPT's Figure 3 plots it); ``on_sims``, when
    given, receives ``(protocol, matrices)`` from each task that scores images against
    captions."""
    metrics, ranks = {}, {}
    for name in protocols:
        proto = PROTOCOLS[name]
        t0 = time.perf_counter()
        metrics[name], ranks[name] = TASKS[proto.task](
            model,
            prepared.split(proto.split),
            proto,
            device=device,
            batch_size=batch_size,
            block_images=block_images,
            sentence=sentence,
            on_sims=None if on_sims is None else functools.partial(on_sims, name),
        )
        if seconds is not None:
            seconds[name] = time.perf_counter() - t0
    return metrics, ranks


def phrase(model: RetrievalModel, split: PreparedSplit, protocol: Protocol, *, device: torch.device,
           batch_size: int, block_images: int, sentence: bool,
           on_sims: SimsSink | None = None) -> tuple[Metrics, Ranks]:
    """Phrase localization recall at 1, 5 and 10 (IoU >= 0.5), per-phrase ranks, the
    proposals' upper bound, and for the regression gate the chance level of R@1 (the
    mean share of correct proposals: the expected R@1 of a random ranking) and the
    number of phrases.

    The split's ``extras["entities"]`` is the phrase-region split (``data/entities.py``):
    every phrase of every caption is encoded as a text (with the captions' vocabulary or
    tf-idf statistics), every proposal of its image as a global image vector, and the
    proposals are ranked by the model's similarity (not an image-caption matrix:
    ``on_sims`` is not called).
    """
    from xmrbench.data.entities import IOU_HIT, iou

    ents = split.split.extras.get("entities")
    if ents is None:
        raise DataError(f"split {split.name!r} has no phrase-region annotations (extras 'entities'); "
                        f"protocol {protocol.name!r} needs them")
    was_training = model.training
    model.eval()
    ranks: list[int] = []
    found = {1: 0, 5: 0, 10: 0}
    chance = 0.0
    reachable = 0
    try:
        with torch.no_grad():
            for image in range(ents.n_images):
                captions = range(image * ents.captions_per_image, (image + 1) * ents.captions_per_image)
                queries = [(j, k) for j in captions for k in range(len(ents.phrases[j]))]
                if not queries:
                    continue
                boxes, feats = ents.proposals(image)
                if not len(boxes):
                    ranks.extend([0] * len(queries))
                    continue
                prop = torch.cat([model.encode_images(torch.tensor(feats[s:s + batch_size]).to(device))
                                  for s in range(0, len(feats), batch_size)])
                texts = [ents.phrases[j][k].text(ents.captions[j]) for j, k in queries]
                txt = model.encode_texts(split.strings_batch(texts).to(device))
                scores = model.similarity(prop, txt).float().cpu()  # (P, Q)
                for q, (j, k) in enumerate(queries):
                    correct = torch.from_numpy(iou(boxes, ents.phrase_boxes(j, k)).max(1) >= IOU_HIT)
                    chance += float(correct.sum()) / len(correct)  # a random ranking puts a correct one first
                    rank = correct_rank(scores[:, q], correct)
                    ranks.append(rank or 0)  # 0: no proposal is correct
                    reachable += rank is not None
                    for cutoff in found:
                        found[cutoff] += rank is not None and rank <= cutoff
    finally:
        model.train(was_training)
    if not ranks:
        raise DataError(f"split {split.name!r} has no phrases to localize")
    n = len(ranks)
    metrics = {K.PL_R1: 100 * found[1] / n, K.PL_R5: 100 * found[5] / n, K.PL_R10: 100 * found[10] / n,
               K.PL_UPPER: 100 * reachable / n, K.PL_R1_CHANCE: 100 * chance / n, K.PL_PHRASES: float(n)}
    return metrics, {"phrase": ranks}


TASKS: Registry[TaskEvaluator] = Registry(
    "evaluation task",
    {
        "image_text": image_text,
        "label": label,
        "sentence": sentence,
        "phrase": phrase,
    },
)
