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
"""

from __future__ import annotations

import math

from xmrbench.core.metrics import keys as K
from xmrbench.errors import ConfigError

RECALL_KS = (1, 5, 10)


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


def headline_metric(metrics: dict[str, float]) -> str:
    """The metric the learning checks judge for one protocol's metrics (rsum for image-sentence retrieval)."""
    if K.RSUM in metrics:
        return K.RSUM
    raise ConfigError(f"no chance level is known for a protocol with the metrics {', '.join(sorted(metrics))} "
                      "(xmrbench/gate/chance.py knows rsum)")


def chance_level(metric: str, *, images: int, captions_per_image: int, folds: int = 1) -> float:
    """Chance level of ``metric`` on a split of ``images`` images scored in ``folds`` equal folds."""
    if folds < 1 or images % folds:
        raise ValueError(f"{images} images do not split into {folds} equal folds")
    if metric == K.RSUM:
        return chance_rsum(images // folds, captions_per_image)
    raise ConfigError(f"no chance level is known for metric {metric!r}")


def resolution(metric: str, *, images: int, captions_per_image: int, folds: int = 1) -> float:
    """The change of ``metric`` that one image query and one caption query can cause (per fold)."""
    if metric == K.RSUM:
        return rsum_resolution(images // folds, captions_per_image)
    raise ConfigError(f"no resolution is known for metric {metric!r}")
