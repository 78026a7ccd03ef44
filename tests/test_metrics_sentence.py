"""Tests for xmrbench.core.metrics.sentence (sentence-to-sentence retrieval)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xmrbench.core.metrics.keys import S2S_R1, S2S_R5, S2S_R10
from xmrbench.core.metrics.retrieval import recall_at_k
from xmrbench.core.metrics.sentence import s2s_ranks, sentence_metrics

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
HYPOTHESIS = settings(max_examples=40, deadline=None)
KEYS = (S2S_R1, S2S_R5, S2S_R10)


# --------------------------------------------------------------------------- naive references


def naive_sorted(txt_sims: np.ndarray, c: int) -> np.ndarray:
    """Drop the query from its row, sort, take the best position of a sibling (no ties)."""
    ranks = []
    for q in range(txt_sims.shape[0]):
        others = [j for j in range(txt_sims.shape[0]) if j != q]
        order = sorted(others, key=lambda j: -txt_sims[q, j])
        ranks.append(min(pos for pos, j in enumerate(order) if j // c == q // c))
    return np.array(ranks)


def naive_count(txt_sims: np.ndarray, c: int) -> np.ndarray:
    """Pessimistic ties: other images' captions scoring >= the best sibling."""
    ranks = []
    for q in range(txt_sims.shape[0]):
        best = max(txt_sims[q, j] for j in range(txt_sims.shape[0]) if j != q and j // c == q // c)
        ranks.append(sum(1 for j in range(txt_sims.shape[0]) if j // c != q // c and txt_sims[q, j] >= best))
    return np.array(ranks)


def naive_metrics(ranks: np.ndarray) -> dict[str, float]:
    return {key: 100.0 * len(np.where(ranks < k)[0]) / len(ranks) for key, k in zip(KEYS, (1, 5, 10), strict=True)}


def random_txt_sims(n_img: int, c: int, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    n = n_img * c
    sims = torch.randn(n, n, generator=gen, dtype=torch.float64)
    group = torch.arange(n) // c
    sims += 1.2 * (group[:, None] == group[None, :])  # siblings are a little more alike
    return sims.to(dtype=dtype, device=device)


def grid_txt_sims(n_img: int, c: int, seed: int, levels: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    n = n_img * c
    return torch.randint(0, levels, (n, n), generator=gen).to(torch.float64) / 8.0


# --------------------------------------------------------------------------- 1. hand-checked


def test_hand_checked():
    # Two images, two captions each: captions 0, 1 -> image 0; 2, 3 -> image 1.
    txt_sims = torch.tensor(
        [
            [9.0, 0.8, 0.9, 0.1],  # sibling 1 at 0.8; caption 2 (0.9) beats it -> 1 (self 9.0 ignored)
            [0.8, 0.0, 0.3, 0.2],  # sibling 0 at 0.8 beats everyone -> 0
            [0.9, 0.3, 0.0, 0.5],  # sibling 3 at 0.5; caption 0 (0.9) beats it -> 1
            [0.1, 0.2, 0.5, 0.0],  # sibling 2 at 0.5 beats everyone -> 0
        ]
    )
    assert s2s_ranks(txt_sims, captions_per_image=2).tolist() == [1, 0, 1, 0]
    assert sentence_metrics(txt_sims, captions_per_image=2) == {S2S_R1: 50.0, S2S_R5: 100.0, S2S_R10: 100.0}


def test_constant_matrix_gets_worst_ranks():
    # 3 images x 3 captions, all tied: the 6 captions of other images all count.
    assert s2s_ranks(torch.ones(9, 9), captions_per_image=3).tolist() == [6] * 9
    assert sentence_metrics(torch.ones(9, 9), captions_per_image=3)[S2S_R5] == 0.0


def test_tied_siblings_never_count_against_the_query():
    txt_sims = torch.tensor(
        [
            [0.0, 0.7, 0.7, 0.1, 0.7, 0.2],  # siblings 1, 2 tie at 0.7; caption 4 ties too -> 1
            [0.4, 0.0, 0.4, 0.3, 0.3, 0.3],  # siblings tie at 0.4; nothing else reaches it -> 0
            [0.1, 0.2, 0.0, 0.3, 0.4, 0.5],  # best sibling 0.2; captions 3, 4, 5 beat it -> 3
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied at 0: captions 0, 1, 2 count -> 3
            [0.0, 0.0, 0.0, 0.9, 5.0, 0.9],  # self (5.0) ignored; siblings tie at 0.9 -> 0
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # all tied -> 3
        ]
    )
    assert s2s_ranks(txt_sims, captions_per_image=3).tolist() == [1, 0, 3, 3, 0, 3]


# --------------------------------------------------------------------------- 2. naive agreement


@pytest.mark.parametrize("n_img,c", [(7, 5), (50, 5), (30, 2), (13, 3)])
def test_matches_naive_sorting_loop(n_img, c):
    txt_sims = random_txt_sims(n_img, c, seed=n_img + c)
    want = naive_sorted(txt_sims.numpy(), c)
    got = s2s_ranks(txt_sims, captions_per_image=c)
    assert got.dtype == torch.long
    np.testing.assert_array_equal(got.numpy(), want)
    got_metrics = sentence_metrics(txt_sims, captions_per_image=c)
    for key, value in naive_metrics(want).items():
        assert got_metrics[key] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("n_img,c,levels", [(7, 5, 3), (20, 2, 4), (6, 3, 2)])
def test_matches_naive_counting_loop_with_ties(n_img, c, levels):
    txt_sims = grid_txt_sims(n_img, c, seed=levels, levels=levels)
    np.testing.assert_array_equal(s2s_ranks(txt_sims, captions_per_image=c).numpy(), naive_count(txt_sims.numpy(), c))


# --------------------------------------------------------------------------- 3. edge cases


def test_single_image():
    # With one image there are no other captions: every sibling ranks first.
    txt_sims = random_txt_sims(1, 5, seed=0)
    assert s2s_ranks(txt_sims).tolist() == [0] * 5
    assert sentence_metrics(txt_sims) == {S2S_R1: 100.0, S2S_R5: 100.0, S2S_R10: 100.0}


def test_k_larger_than_gallery_finds_everything():
    ranks = s2s_ranks(random_txt_sims(2, 2, seed=1), captions_per_image=2)
    assert recall_at_k(ranks, 100).tolist() == [1.0] * 4


def test_one_caption_per_image_has_no_relevant_items():
    with pytest.raises(ValueError, match="captions_per_image >= 2"):
        s2s_ranks(torch.zeros(4, 4), captions_per_image=1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_raise(bad):
    txt_sims = random_txt_sims(3, 5, seed=0)
    txt_sims[4, 9] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        s2s_ranks(txt_sims)
    with pytest.raises(ValueError, match="NaN or inf"):
        sentence_metrics(txt_sims)


@pytest.mark.parametrize(
    "txt_sims,c,message",
    [
        (torch.zeros(10, 5), 5, "square"),
        (torch.zeros(10), 5, "2-D"),
        (torch.zeros(12, 12), 5, "multiple"),
        (torch.zeros(10, 10, dtype=torch.int32), 5, "floating"),
    ],
)
def test_bad_input_raises(txt_sims, c, message):
    with pytest.raises(ValueError, match=message):
        s2s_ranks(txt_sims, captions_per_image=c)


# --------------------------------------------------------------------------- 4. properties


grid_args = dict(
    n_img=st.integers(min_value=1, max_value=7),
    c=st.integers(min_value=2, max_value=4),
    levels=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)


@HYPOTHESIS
@given(**grid_args)
def test_recall_never_decreases_with_k(n_img, c, levels, seed):
    ranks = s2s_ranks(grid_txt_sims(n_img, c, seed, levels), captions_per_image=c)
    hits = torch.stack([recall_at_k(ranks, k) for k in range(1, n_img * c + 1)])
    assert bool((hits[1:] >= hits[:-1]).all())
    got = sentence_metrics(grid_txt_sims(n_img, c, seed, levels), captions_per_image=c)
    assert got[S2S_R1] <= got[S2S_R5] <= got[S2S_R10]


@HYPOTHESIS
@given(**grid_args)
def test_permuting_the_captions_changes_nothing(n_img, c, levels, seed):
    txt_sims = grid_txt_sims(n_img, c, seed, levels)
    gen = torch.Generator().manual_seed(seed)
    img_perm = torch.randperm(n_img, generator=gen)
    # Image blocks move together; captions inside a block are shuffled too. Rows and
    # columns get the same permutation, as they index the same captions.
    perm = torch.cat([img_perm[a] * c + torch.randperm(c, generator=gen) for a in range(n_img)])
    shuffled = txt_sims[perm][:, perm]
    assert torch.equal(s2s_ranks(shuffled, captions_per_image=c), s2s_ranks(txt_sims, captions_per_image=c)[perm])
    assert sentence_metrics(shuffled, captions_per_image=c) == pytest.approx(
        sentence_metrics(txt_sims, captions_per_image=c), abs=1e-9
    )


@HYPOTHESIS
@given(**{**grid_args, "levels": st.integers(min_value=1, max_value=40)})
def test_float32_and_float64_agree(n_img, c, levels, seed):
    txt_sims = grid_txt_sims(n_img, c, seed, levels)
    assert torch.equal(
        s2s_ranks(txt_sims.float(), captions_per_image=c), s2s_ranks(txt_sims, captions_per_image=c)
    )


# --------------------------------------------------------------------------- 5. dtype and device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_devices(dtype, device):
    txt_sims = random_txt_sims(12, 5, seed=3, dtype=dtype, device=device)
    exact = txt_sims.to(device="cpu", dtype=torch.float64).numpy()  # the stored values, ties and all
    got = s2s_ranks(txt_sims, block_size=7)
    assert got.device == txt_sims.device
    np.testing.assert_array_equal(got.cpu().numpy(), naive_count(exact, 5))


# --------------------------------------------------------------------------- 6. large matrices


def test_blocked_equals_unblocked_on_a_large_matrix():
    txt_sims = random_txt_sims(400, 5, seed=17, dtype=torch.float32)
    whole = s2s_ranks(txt_sims, block_size=2000)
    for blocks in (7, 256, None):
        assert torch.equal(s2s_ranks(txt_sims, block_size=blocks), whole)
