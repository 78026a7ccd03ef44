"""Mini-batch samplers: which captions (and so which images) form each training batch.

A sampler turns the caption -> image map of the training split and a seeded
generator into a list of batches of caption indices. Images are deduplicated by
the engine: a batch holds each of its images once, and labels tell the loss which
captions belong to which image.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from xmrbench.registry import Registry


class Sampler(Protocol):
    def __call__(self, caption_image: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]: ...


def random_batches(caption_image: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """All captions in a random order, cut into batches of ``batch_size`` (the last may be smaller).

    A final batch of fewer than 2 captions is merged into the previous one (a ranking
    loss needs a negative).
    """
    order = rng.permutation(len(caption_image))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def neighbourhood_batches(caption_image: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Two-branch "neighbourhood sampling" (Wang et al., Sec. 3.2.3 and 5.1).

    Start from random batches; then, for every image that has exactly one caption in
    a batch, add another of its captions (drawn at random), so that every target
    image has at least two positive sentences in its batch. Batches grow by up to
    ``batch_size`` captions. Images with a single caption overall cannot be helped.
    """
    by_image: dict[int, np.ndarray] = {}
    order = np.argsort(caption_image, kind="stable")
    bounds = np.flatnonzero(np.diff(caption_image[order])) + 1
    for group in np.split(order, bounds):
        if len(group):
            by_image[int(caption_image[group[0]])] = group
    batches = []
    for batch in random_batches(caption_image, batch_size, rng):
        images, counts = np.unique(caption_image[batch], return_counts=True)
        extra = []
        present = set(batch.tolist())
        for img in images[counts == 1]:
            candidates = [c for c in by_image[int(img)].tolist() if c not in present]
            if candidates:
                extra.append(candidates[int(rng.integers(len(candidates)))])
        batches.append(np.concatenate([batch, np.asarray(extra, dtype=batch.dtype)]) if extra else batch)
    return batches


SAMPLERS: Registry[Sampler] = Registry(
    "sampler",
    {
        "random": random_batches,
        "neighbourhood": neighbourhood_batches,
    },
)
