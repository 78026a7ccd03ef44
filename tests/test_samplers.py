"""Mini-batch samplers."""

from __future__ import annotations

import numpy as np

from xmrbench.engine.samplers import (
    SAMPLERS,
    neighbourhood_batches,
    random_batches,
)


def caption_image(n_images=50, cpi=5):
    return np.arange(n_images * cpi) // cpi


def test_random_batches_cover_every_caption_once():
    ci = caption_image()
    batches = random_batches(ci, 32, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(ci)))
    assert all(len(b) >= 2 for b in batches)


def test_random_batches_never_leave_a_singleton():
    ci = caption_image(n_images=5, cpi=5)  # 25 captions, batch 12 -> 12, 12, 1 -> merged
    batches = random_batches(ci, 12, np.random.default_rng(0))
    assert [len(b) for b in batches] == [12, 13]
    assert sorted(np.concatenate(batches).tolist()) == list(range(25))


def test_same_generator_seed_same_batches():
    ci = caption_image()
    a = random_batches(ci, 32, np.random.default_rng([7, 3]))
    b = random_batches(ci, 32, np.random.default_rng([7, 3]))
    assert all((x == y).all() for x, y in zip(a, b))


def test_neighbourhood_sampling_gives_every_image_two_captions():
    ci = caption_image(n_images=200)
    base = random_batches(ci, 64, np.random.default_rng(1))
    batches = neighbourhood_batches(ci, 64, np.random.default_rng(1))
    assert len(batches) == len(base)
    for b, orig in zip(batches, base):
        assert set(orig.tolist()) <= set(b.tolist())  # only additions
        assert len(set(b.tolist())) == len(b)  # no caption twice
        _, counts = np.unique(ci[b], return_counts=True)
        assert counts.min() >= 2
        assert len(b) <= 2 * len(orig)


def test_neighbourhood_sampling_with_single_caption_images():
    ci = np.array([0, 1, 1, 2, 2, 2])  # image 0 has only one caption: cannot be helped
    batches = neighbourhood_batches(ci, 6, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3, 4, 5]


def test_registry_names():
    assert set(SAMPLERS) == {"random", "neighbourhood"}
