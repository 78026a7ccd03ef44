"""Chance levels: what a model that ranks at random scores on a split.

The learning checks of the gate (``docs/gate.md``) and the "it learns" tests compare a
trained model with the chance level of the very split it was evaluated on, never with
a fixed number: 100 test images with 5 captions each have a chance rsum of 31.6, 1,000
images 3.2, 20 images 149.7.

Image->text: an image's query succeeds at K when one of its ``cpi`` captions is among
the top K of ``n * cpi`` captions; for a uniformly random ranking that probability is
``1 - C(n*cpi - cpi, K) / C(n*cpi, K)`` (hypergeometric). Text->image: the one matching
image is among the top K of ``n`` with probability ``K / n``. Averaging over folds of
equal size does not change the expectation, so a ``k``-fold protocol has the chance
level of one fold.

Label mAP (``i2t_map``, ``t2i_map``, ``avg_map``): a query with ``R`` relevant items in a
gallery of ``N`` ranked uniformly at random has the expected average precision

    E[AP] = (1/N) * [H_N + (R - 1) / (N - 1) * (N - H_N)],   H_N = 1 + 1/2 + ... + 1/N.

(AP = (1/R) * sum_k rel_k * P@k = (1/R) * sum_k (1/k) * sum_{j <= k} rel_j * rel_k; at a
random position ``E[rel_k] = R/N`` and, for ``j != k``, ``E[rel_j * rel_k] = R(R-1)/(N(N-1))``,
so the sum is ``(R/N) * H_N + R(R-1)/(N(N-1)) * sum_k (k-1)/k``, and ``sum_k (k-1)/k = N - H_N``.)
A query with no relevant item has AP 0, as :func:`xmrbench.core.metrics.labels.average_precision`
scores it. The chance mAP of a split is the mean of E[AP] over its queries, so it depends
on the labels, not only on the sizes: the ``label`` task records it with every
whole-list mAP (``i2t_map_chance``, ``t2i_map_chance``, ``avg_map_chance``,
:func:`chance_label_map`), and the gate reads it from the runs' own metrics.

Phrase localization R@1 (``pl_r1``): a phrase whose image has ``n`` proposals, ``c`` of
them correct (IoU >= 0.5), puts a correct one first in a random ranking with probability
``c / n``; the chance level is the mean of that over the phrases (0 for a phrase without
proposals), recorded by the ``phrase`` task as ``pl_r1_chance`` beside the number of
phrases (``pl_phrases``), from which one phrase's weight in ``pl_r1`` follows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.labels import chance_average_precision, chance_label_map  # noqa: F401 (the gate's chance levels)
from xmrbench.errors import ConfigError

RECALL_KS = (1, 5, 10)
#: Each label mAP key and the key of its chance level, which the ``label`` task records beside it.
MAP_CHANCE_KEYS: dict[str, str] = {
    K.I2T_MAP: K.I2T_MAP_CHANCE,
    K.T2I_MAP: K.T2I_MAP_CHANCE,
    K.AVG_MAP: K.AVG_MAP_CHANCE,
}


def chance_i2t_recall(n_images: int, captions_per_image: int, k: int) -> float:
    """Expected image->text R@k (percent) of a random ranking."""
    n_txt = n_images * captions_per_image
    k = min(k, n_txt)
    return 100.0 * (1.0 - math.comb(n_txt - captions_per_image, k) / math.comb(n_txt, k))


def chance_t2i_recall(n_images: int, k: int) -> float:
    """Expected text->image R@k (percent) of a random ranking."""
    return 100.0 * min(k, n_images) / n_images


def chance_rsum(n_images: int, captions_per_image: int = 5) -> float:
    """Expected rsum of a random ranking of ``n_images`` images with ``captions_per_image`` captions each."""
    if n_images < 1 or captions_per_image < 1:
        raise ValueError("n_images and captions_per_image must be >= 1")
    return sum(chance_i2t_recall(n_images, captions_per_image, k) + chance_t2i_recall(n_images, k) for k in RECALL_KS)


def rsum_resolution(n_images: int, captions_per_image: int = 5) -> float:
    """How far one image query and one caption query can move rsum (each counts in R@1, R@5, R@10)."""
    return 3 * 100.0 / n_images + 3 * 100.0 / (n_images * captions_per_image)


def headline_metric(metrics: Mapping[str, float]) -> str:
    """The metric the learning checks judge for one protocol's metrics: rsum for
    image-sentence retrieval, ``avg_map`` for label retrieval (the whole-list mAP),
    ``pl_r1`` for phrase localization."""
    if K.RSUM in metrics:
        return K.RSUM
    if K.AVG_MAP in metrics:
        return K.AVG_MAP
    if K.PL_R1 in metrics:
        return K.PL_R1
    raise ConfigError(f"no chance level is known for a protocol with the metrics {', '.join(sorted(metrics))} "
                      "(xmrbench/gate/chance.py knows rsum, the whole-list label mAP avg_map and phrase "
                      "localization's pl_r1)")


def chance_level(metric: str, *, images: int, captions_per_image: int, folds: int = 1,
                 runs: Sequence[Mapping[str, float]] = ()) -> float:
    """Chance level of ``metric`` on a split of ``images`` images scored in ``folds`` equal folds.

    A label mAP's chance level depends on the split's labels: it is read from ``runs``, the
    protocol's metrics of the runs being judged (the mean of their recorded chance levels).
    """
    if folds < 1 or images % folds:
        raise ValueError(f"{images} images do not split into {folds} equal folds")
    if metric == K.RSUM:
        return chance_rsum(images // folds, captions_per_image)
    if metric in MAP_CHANCE_KEYS:
        return _recorded(runs, MAP_CHANCE_KEYS[metric], metric, "the split's labels")
    if metric == K.PL_R1:
        return _recorded(runs, K.PL_R1_CHANCE, metric, "the split's proposals")
    raise ConfigError(f"no chance level is known for metric {metric!r}")


def _recorded(runs: Sequence[Mapping[str, float]], key: str, metric: str, source: str) -> float:
    """The mean over ``runs`` of ``key``, a value the task records beside ``metric`` from
    ``source``."""
    if not runs:
        raise ConfigError(f"{key} ({metric}) depends on {source}: pass the runs' metrics")
    if any(key not in run for run in runs):
        raise ConfigError(f"a run's metrics lack {key} (for {metric}): it was computed before the task recorded "
                          "it; run it again")
    return float(np.mean([float(run[key]) for run in runs]))


def map_resolution(n_images: int, n_texts: int) -> float:
    """How far one image query and one text query can move ``avg_map``: a query's AP lies in
    [0, 1], so one image query moves ``i2t_map`` by at most 1/n_images, one text query
    ``t2i_map`` by at most 1/n_texts, and ``avg_map`` is their mean."""
    return (1.0 / n_images + 1.0 / n_texts) / 2


def resolution(metric: str, *, images: int, captions_per_image: int, folds: int = 1,
               runs: Sequence[Mapping[str, float]] = ()) -> float:
    """The change of ``metric`` that one image query and one caption query can cause (per
    fold); for phrase localization's ``pl_r1``, one phrase query (the phrase count is read
    from ``runs``)."""
    if folds < 1 or images % folds:
        raise ValueError(f"{images} images do not split into {folds} equal folds")
    if metric == K.PL_R1:
        return 100.0 / _recorded(runs, K.PL_PHRASES, metric, "the split's phrases")
    n_images = images // folds
    n_texts = n_images * captions_per_image
    if metric == K.RSUM:
        return rsum_resolution(n_images, captions_per_image)
    if metric == K.AVG_MAP:
        return map_resolution(n_images, n_texts)
    if metric == K.I2T_MAP:
        return 1.0 / n_images
    if metric == K.T2I_MAP:
        return 1.0 / n_texts
    raise ConfigError(f"no resolution is known for metric {metric!r}")
