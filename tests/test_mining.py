"""Offline hard-negative mining against a naive loop, blocked against whole-matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmrbench.core.mining import hardest_captions, hardest_images
from xmrbench.engine.evaluate import encode, similarity_matrix
from xmrbench.engine.miners import MINERS

from toy import toy_model_and_split


def naive_captions(sims: np.ndarray, caption_image: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(sims.shape[0]):
        cands = [j for j in range(sims.shape[1]) if caption_image[j] != i]
        cands.sort(key=lambda j: (-sims[i, j], j))
        out.append(cands[:k])
    return np.array(out)


def naive_images(sims: np.ndarray, caption_image: np.ndarray, k: int) -> np.ndarray:
    out = []
    for j in range(sims.shape[1]):
        cands = [i for i in range(sims.shape[0]) if i != caption_image[j]]
        cands.sort(key=lambda i: (-sims[i, j], i))
        out.append(cands[:k])
    return np.array(out)


@pytest.mark.parametrize("ties", [False, True])
def test_kernels_equal_a_naive_loop(ties):
    gen = torch.Generator().manual_seed(3)
    n_img, cpi, k = 9, 3, 4
    sims = torch.randn(n_img, n_img * cpi, generator=gen, dtype=torch.float64)
    if ties:  # few distinct values: the index must break ties
        sims = torch.round(sims * 2) / 2
    caption_image = torch.arange(n_img).repeat_interleave(cpi)
    got = hardest_captions(sims, torch.arange(n_img), caption_image, k)
    assert np.array_equal(got.numpy(), naive_captions(sims.numpy(), caption_image.numpy(), k))
    got = hardest_images(sims, torch.arange(n_img * cpi), caption_image, k)
    assert np.array_equal(got.numpy(), naive_images(sims.numpy(), caption_image.numpy(), k))
    # a block of rows / columns gives the rows / columns of the whole
    rows = hardest_captions(sims[3:6], torch.arange(3, 6), caption_image, k)
    assert np.array_equal(rows.numpy(), naive_captions(sims.numpy(), caption_image.numpy(), k)[3:6])
    cols = hardest_images(sims[:, 5:11], torch.arange(5, 11), caption_image, k)
    assert np.array_equal(cols.numpy(), naive_images(sims.numpy(), caption_image.numpy(), k)[5:11])


def test_k_beyond_the_candidates_is_an_error():
    sims = torch.zeros(3, 6)
    caption_image = torch.arange(3).repeat_interleave(2)
    with pytest.raises(ValueError, match="exceeds the 4 captions"):
        hardest_captions(sims, torch.arange(3), caption_image, 5)
    with pytest.raises(ValueError, match="exceeds the 2 other images"):
        hardest_images(sims, torch.arange(6), caption_image, 3)


def test_the_miner_blocks_like_the_whole_matrix():
    model, split = toy_model_and_split()
    miner = MINERS["hardest_negatives"](MINERS["hardest_negatives"].Params(k=7))
    out = miner.mine(model, split, device=torch.device("cpu"), batch_size=13, block_images=11)
    enc = encode(model, split, device=torch.device("cpu"), batch_size=64)
    sims = similarity_matrix(model, enc, block_images=1000).numpy()
    caption_image = split.caption_image()
    assert out["i2t"].shape == (60, 7) and out["t2i"].shape == (300, 7)
    # blocks may reorder a BLAS sum in the last bit, so compare the mined candidates' scores
    # with the naive lists' scores (not the indices, which a last-bit near-tie may swap)
    i2t, t2i = out["i2t"].numpy(), out["t2i"].numpy()
    want_i2t, want_t2i = naive_captions(sims, caption_image, 7), naive_images(sims, caption_image, 7)
    rows = np.arange(60)[:, None]
    np.testing.assert_allclose(sims[rows, i2t], sims[rows, want_i2t], rtol=0, atol=1e-5)
    cols = np.arange(300)[:, None]
    np.testing.assert_allclose(sims.T[cols, t2i], sims.T[cols, want_t2i], rtol=0, atol=1e-5)
    assert not (caption_image[i2t] == rows).any() and not (t2i == caption_image[:, None]).any()
    assert (np.mean(i2t == want_i2t) > 0.95) and (np.mean(t2i == want_t2i) > 0.95)
