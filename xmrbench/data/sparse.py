"""Sparse corpora (A3VSE Sec. 4.1): a fraction of the training images, k sentences each.

A3VSE "randomly shuffle[s] once and trim[s] the training set" to a percentage of its
images and samples 1, 2 or 5 of the 5 sentences of each kept image; the training
images that were not kept become the un-annotated pool, of which only the images
(and machine-made semantics) are used.

Deterministic and nested by construction:

- images: one seeded permutation of the training images; the first
  ``floor(fraction x N)`` are kept (so the 10% subset lies inside the 20% subset, which
  lies inside the 50% one, for one seed). ``floor`` reproduces the printed counts:
  MS-COCO 10% of 113,287 is 11,328 images (A3VSE Table 3), not 11,329;
- sentences: per image, one seeded permutation of its captions; the first k are kept
  (so 1 of 5 lies inside 2 of 5), in their original order. The choice for an image
  does not depend on the fraction;
- both orders are kept: the sampled images stay in dataset order, and so does the pool.

Pair counts are ``images x sentences``; :func:`sparse_counts` computes them from
split sizes alone (A3VSE Tables 1 and 3 are checked against it in the tests).

Features are never copied: the sampled splits hold :class:`~xmrbench.data.dataset.RowView`
objects, lazy row-subsets of the original (memory-mapped or HDF5) arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmrbench.data.dataset import Split, row_view
from xmrbench.errors import ConfigError

UNANNOTATED = "unannotated"
"""Name of the split holding the training images left out of a sparse corpus."""

_EPS = 1e-9  # 0.1 * 29000 is 2900.0000000000005 in floating point: floor must see 2900


@dataclass(frozen=True)
class SparseCounts:
    """Sizes of a sparse training set: kept images, sentences each, pairs, pool size."""

    images: int
    sentences: int
    pairs: int
    unannotated: int


def sparse_image_count(n_images: int, fraction: float) -> int:
    """``floor(fraction x n_images)`` training images kept (at least 1)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"sparse image fraction must be in (0, 1], got {fraction!r}", key="data.sparse_images")
    return max(1, min(n_images, math.floor(fraction * n_images + _EPS)))


def sparse_counts(
    n_images: int, *, fraction: float | None, sentences: int | None, captions_per_image: int = 5
) -> SparseCounts:
    """Counts of the sparse corpus of ``n_images`` training images (no data needed).

    ``fraction`` None keeps every image, ``sentences`` None every caption. For example
    Flickr30K (29,000 training images) at 50% images and 2 sentences: 14,500 images,
    29,000 pairs, 14,500 un-annotated images.
    """
    k = captions_per_image if sentences is None else sentences
    if not 1 <= k <= captions_per_image:
        raise ConfigError(
            f"sparse sentences must be in 1..{captions_per_image}, got {sentences!r}", key="data.sparse_sentences"
        )
    kept = n_images if fraction is None else sparse_image_count(n_images, fraction)
    return SparseCounts(images=kept, sentences=k, pairs=kept * k, unannotated=n_images - kept)


def _rng(seed: int, purpose: str) -> np.random.Generator:
    from xmrbench.data.synthetic.seeds import numpy_rng

    return numpy_rng(seed, "sparse", purpose)


def sparse_selection(
    n_images: int,
    captions_per_image: int,
    *,
    fraction: float | None,
    sentences: int | None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which images and captions a sparse corpus keeps.

    Returns ``image_index`` (n_kept,) sorted, ``caption_index`` (n_kept, k) sorted per
    row (global caption indices ``image x captions_per_image + j``), and ``pool_index``
    (n_images - n_kept,) sorted: the un-annotated images.
    """
    counts = sparse_counts(n_images, fraction=fraction, sentences=sentences, captions_per_image=captions_per_image)
    order = _rng(seed, "images").permutation(n_images)
    image_index = np.sort(order[: counts.images])
    pool_index = np.sort(order[counts.images :])
    keys = _rng(seed, "sentences").random((n_images, captions_per_image))
    chosen = np.sort(np.argsort(keys, axis=1, kind="stable")[:, : counts.sentences], axis=1)
    caption_index = image_index[:, None] * captions_per_image + chosen[image_index]
    return image_index, caption_index.astype(np.int64), pool_index


def _take_extra(value: Any, n_images: int, n_captions: int, image_index: np.ndarray, cap_index: np.ndarray) -> Any:
    """A per-image (or per-caption) annotation restricted to the kept rows; others as they are."""
    if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n_images:
        return np.asarray(value[image_index])
    if isinstance(value, list) and len(value) == n_images:
        return [value[int(i)] for i in image_index]
    if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == n_captions:
        return _DROP if cap_index is None else np.asarray(value[cap_index])
    return value  # dataset-level (tag_expansion) or unknown: untouched


_DROP = object()  # a per-caption annotation has no place in a caption-less split


def _take_extras(extras: dict[str, Any], *args: Any) -> dict[str, Any]:
    out = {key: _take_extra(v, *args) for key, v in extras.items()}
    return {key: v for key, v in out.items() if v is not _DROP}


def sparse_splits(
    train: Split, *, fraction: float | None, sentences: int | None, seed: int = 0
) -> tuple[Split, Split | None]:
    """The sparse training split and the un-annotated pool (None when no image is left out).

    ``train`` keeps ``floor(fraction x N)`` images with ``sentences`` captions each
    (``captions_per_image`` = ``sentences``); the pool (split ``"unannotated"``) holds
    the other images with their features and per-image extras (semantics, tags,
    labels, ...) and no captions (``captions_per_image`` 0). Features are lazy
    :class:`~xmrbench.data.dataset.RowView` s of ``train``'s arrays.
    """
    cpi = train.captions_per_image
    if cpi < 1:
        raise ConfigError(f"split {train.name!r} has no captions to subsample", key="data.sparse_sentences")
    image_index, caption_index, pool_index = sparse_selection(
        train.n_images, cpi, fraction=fraction, sentences=sentences, seed=seed
    )
    k = caption_index.shape[1]
    flat = caption_index.reshape(-1)
    n, n_caps = train.n_images, train.n_captions
    kept = Split(
        name=train.name,
        captions=[train.captions[int(j)] for j in flat],
        captions_per_image=k,
        regions=row_view(train.regions, image_index),
        global_feats=row_view(train.global_feats, image_index),
        extras=_take_extras(train.extras, n, n_caps, image_index, flat),
        text_feats=row_view(train.text_feats, flat),
    )
    if not len(pool_index):
        return kept, None
    pool = Split(
        name=UNANNOTATED,
        captions=[],
        captions_per_image=0,
        regions=row_view(train.regions, pool_index),
        global_feats=row_view(train.global_feats, pool_index),
        extras=_take_extras(train.extras, n, n_caps, pool_index, None),
    )
    return kept, pool
