"""Tests for xmrbench.core.metrics.retrieval (image <-> caption retrieval)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xmrbench.core.metrics.keys import RECALL_KEYS, RETRIEVAL_KEYS, RSUM
from xmrbench.core.metrics.retrieval import (
    fold_metrics,
    i2t_ranks,
    recall_at_k,
    retrieval_metrics,
    summarize,
    t2i_ranks,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
HYPOTHESIS = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------- naive references
# Written independently of the implementation: plain loops over queries.


def naive_i2t_sorted(sims: np.ndarray, c: int) -> np.ndarray:
    """Sort each image's row and take the best position of any of its captions (no ties)."""
    ranks = []
    for i in range(sims.shape[0]):
        order = list(np.argsort(sims[i])[::-1])
        ranks.append(min(order.index(j) for j in range(i * c, (i + 1) * c)))
    return np.array(ranks)


def naive_t2i_sorted(sims: np.ndarray, c: int) -> np.ndarray:
    ranks = []
    for j in range(sims.shape[1]):
        order = list(np.argsort(sims[:, j])[::-1])
        ranks.append(order.index(j // c))
    return np.array(ranks)


def naive_i2t_count(sims: np.ndarray, c: int) -> np.ndarray:
    """Pessimistic ties: count other images' captions scoring >= the best own caption."""
    ranks = []
    for i in range(sims.shape[0]):
        best = max(sims[i, j] for j in range(i * c, (i + 1) * c))
        ranks.append(sum(1 for j in range(sims.shape[1]) if j // c != i and sims[i, j] >= best))
    return np.array(ranks)


def naive_t2i_count(sims: np.ndarray, c: int) -> np.ndarray:
    ranks = []
    for j in range(sims.shape[1]):
        own = sims[j // c, j]
        ranks.append(sum(1 for i in range(sims.shape[0]) if i != j // c and sims[i, j] >= own))
    return np.array(ranks)


def naive_direction(ranks: np.ndarray) -> list[float]:
    recalls = [100.0 * len(np.where(ranks < k)[0]) / len(ranks) for k in (1, 5, 10)]
    return [*recalls, float(np.floor(np.median(ranks)) + 1), float(ranks.mean() + 1)]


def naive_summary(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    values = naive_direction(i2t) + naive_direction(t2i)
    out = dict(zip(RETRIEVAL_KEYS[:10], values, strict=True))
    out[RSUM] = sum(values[0:3]) + sum(values[5:8])
    return out


def random_sims(n_img: int, c: int, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # A mild diagonal bonus so recalls are neither all 0 nor all 100.
    sims = torch.randn(n_img, n_img * c, generator=gen, dtype=torch.float64)
    owner = torch.arange(n_img * c) // c
    sims[owner, torch.arange(n_img * c)] += 1.5
    return sims.to(dtype=dtype, device=device)


def grid_sims(n_img: int, c: int, seed: int, levels: int) -> torch.Tensor:
    """Scores on a coarse dyadic grid: exact in every float dtype, with many ties."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n_img, n_img * c), generator=gen).to(torch.float64) / 8.0


def assert_metrics_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-6) -> None:
    assert list(got) == list(RETRIEVAL_KEYS)
    for key in RETRIEVAL_KEYS:
        assert got[key] == pytest.approx(want[key], abs=tol), key


# --------------------------------------------------------------------------- 1. hand-checked


HAND_SIMS = torch.tensor(
    [
        # captions: 0, 1 (image 0) | 2, 3 (image 1)
        [0.9, 0.1, 0.8, 0.2],
        [0.3, 0.7, 0.6, 0.4],
    ]
)


def test_hand_checked_ranks():
    # Image 0: best own caption 0.9; other image's captions 0.8, 0.2 -> none >= 0.9 -> rank 0.
    # Image 1: best own caption 0.6; other image's captions 0.3, 0.7 -> 0.7 beats it -> rank 1.
    assert i2t_ranks(HAND_SIMS, captions_per_image=2).tolist() == [0, 1]
    # Caption 0: image 0 scores 0.9 vs 0.3 -> 0.  Caption 1: 0.1 vs 0.7 -> 1.
    # Caption 2: image 1 scores 0.6 vs 0.8 -> 1.  Caption 3: 0.4 vs 0.2 -> 0.
    assert t2i_ranks(HAND_SIMS, captions_per_image=2).tolist() == [0, 1, 1, 0]


def test_hand_checked_metrics():
    got = retrieval_metrics(HAND_SIMS, captions_per_image=2)
    # i2t ranks [0, 1]: R@1 50, R@5 100, R@10 100; median 0.5 -> floor 0 -> medr 1; meanr 0.5 + 1.
    # t2i ranks [0, 1, 1, 0]: same values. rsum = 2 * (50 + 100 + 100).
    want = {
        "i2t_r1": 50.0, "i2t_r5": 100.0, "i2t_r10": 100.0, "i2t_medr": 1.0, "i2t_meanr": 1.5,
        "t2i_r1": 50.0, "t2i_r5": 100.0, "t2i_r10": 100.0, "t2i_medr": 1.0, "t2i_meanr": 1.5,
        "rsum": 500.0,
    }
    assert got == want


def test_medr_uses_numpy_median_for_even_counts():
    # Ranks 0 and 10: numpy's median is 5.0 -> medr 6 (a lower median would say 1).
    # Ranks 0, 3, 4, 9: median 3.5 -> floor 3 -> medr 4.  meanr = 5 + 1 and 4 + 1.
    got = summarize(torch.tensor([0, 10]), torch.tensor([0, 3, 4, 9]))
    assert got["i2t_medr"] == 6.0
    assert got["t2i_medr"] == 4.0
    assert got["i2t_meanr"] == 6.0
    assert got["t2i_meanr"] == 5.0
    # Odd count: the middle value. Ranks 7, 1, 3 -> median 3 -> medr 4.
    assert summarize(torch.tensor([7, 1, 3]), torch.tensor([0]))["i2t_medr"] == 4.0


def test_recall_at_k_is_hit_indicator():
    ranks = torch.tensor([0, 4, 5, 9, 10])
    assert recall_at_k(ranks, 1).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert recall_at_k(ranks, 5).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert recall_at_k(ranks, 10).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert recall_at_k(ranks, 1).dtype == torch.float32


# --------------------------------------------------------------------------- 2. naive agreement


@pytest.mark.parametrize("n_img,c", [(7, 5), (50, 5), (20, 1), (30, 2), (13, 3)])
def test_matches_naive_sorting_loop(n_img, c):
    sims = random_sims(n_img, c, seed=n_img * 10 + c)
    arr = sims.numpy()
    want_i2t, want_t2i = naive_i2t_sorted(arr, c), naive_t2i_sorted(arr, c)
    got_i2t = i2t_ranks(sims, captions_per_image=c)
    got_t2i = t2i_ranks(sims, captions_per_image=c)
    assert got_i2t.dtype == torch.long and got_t2i.dtype == torch.long
    np.testing.assert_array_equal(got_i2t.numpy(), want_i2t)
    np.testing.assert_array_equal(got_t2i.numpy(), want_t2i)
    assert_metrics_close(retrieval_metrics(sims, captions_per_image=c), naive_summary(want_i2t, want_t2i))


@pytest.mark.parametrize("n_img,c,levels", [(7, 5, 3), (25, 2, 5), (12, 1, 2)])
def test_matches_naive_counting_loop_with_ties(n_img, c, levels):
    sims = grid_sims(n_img, c, seed=n_img + levels, levels=levels)
    arr = sims.numpy()
    want_i2t, want_t2i = naive_i2t_count(arr, c), naive_t2i_count(arr, c)
    np.testing.assert_array_equal(i2t_ranks(sims, captions_per_image=c).numpy(), want_i2t)
    np.testing.assert_array_equal(t2i_ranks(sims, captions_per_image=c).numpy(), want_t2i)
    assert_metrics_close(retrieval_metrics(sims, captions_per_image=c), naive_summary(want_i2t, want_t2i))


@pytest.mark.parametrize("n_img,c,n_folds", [(50, 5, 5), (30, 2, 3), (12, 1, 4)])
def test_fold_metrics_matches_naive_fold_loop(n_img, c, n_folds):
    sims = random_sims(n_img, c, seed=7 * n_img + c)
    arr = sims.numpy()
    m = n_img // n_folds
    per_fold = []
    for f in range(n_folds):
        block = arr[f * m : (f + 1) * m, f * m * c : (f + 1) * m * c]
        per_fold.append(naive_summary(naive_i2t_sorted(block, c), naive_t2i_sorted(block, c)))
    want = {key: float(np.mean([fold[key] for fold in per_fold])) for key in RETRIEVAL_KEYS}
    want[RSUM] = sum(want[key] for key in RECALL_KEYS)
    got = fold_metrics(sims, n_folds=n_folds, captions_per_image=c)
    assert_metrics_close(got, want)
    # The reported rsum is exactly the sum of the reported recalls.
    assert got[RSUM] == pytest.approx(sum(got[key] for key in RECALL_KEYS), abs=1e-9)


def test_fold_metrics_only_uses_diagonal_blocks():
    sims = random_sims(10, 5, seed=3)
    before = fold_metrics(sims, n_folds=2)
    corrupted = sims.clone()
    corrupted[:5, 25:] = 100.0  # off-diagonal block: fold 0's images vs fold 1's captions
    corrupted[5:, :25] = 100.0
    assert fold_metrics(corrupted, n_folds=2) == before
    assert retrieval_metrics(corrupted) != retrieval_metrics(sims)


def test_one_fold_is_the_whole_gallery():
    sims = random_sims(20, 5, seed=11)
    assert_metrics_close(fold_metrics(sims, n_folds=1), retrieval_metrics(sims), tol=1e-9)


def test_fold_metrics_rejects_uneven_split():
    with pytest.raises(ValueError, match="folds"):
        fold_metrics(random_sims(12, 5, seed=0), n_folds=5)


# --------------------------------------------------------------------------- 3. edge cases


def test_constant_matrix_gets_worst_ranks():
    sims = torch.zeros(4, 20)
    # Every one of the 15 other images' captions ties with the best own caption.
    assert i2t_ranks(sims).tolist() == [15] * 4
    # Every one of the 3 other images ties with the caption's own image.
    assert t2i_ranks(sims).tolist() == [3] * 20
    got = retrieval_metrics(sims)
    assert got["i2t_r1"] == 0.0 and got["i2t_r10"] == 0.0 and got["t2i_r1"] == 0.0
    assert got["i2t_medr"] == 16.0 and got["t2i_medr"] == 4.0


def test_tied_own_captions_never_count_against_the_image():
    sims = torch.tensor(
        [
            [0.5, 0.5, 0.5, 0.2],  # own captions tie with each other; caption 2 ties -> rank 1
            [0.1, 0.1, 0.3, 0.3],  # own captions tie; no other caption reaches 0.3 -> rank 0
        ]
    )
    assert i2t_ranks(sims, captions_per_image=2).tolist() == [1, 0]


def test_single_image():
    sims = random_sims(1, 5, seed=2)
    assert i2t_ranks(sims).tolist() == [0]
    assert t2i_ranks(sims).tolist() == [0] * 5
    got = retrieval_metrics(sims)
    assert got["rsum"] == 600.0 and got["i2t_medr"] == 1.0 and got["t2i_meanr"] == 1.0
    assert fold_metrics(sims, n_folds=1) == got


def test_k_larger_than_gallery_finds_everything():
    ranks = i2t_ranks(random_sims(3, 5, seed=4))
    assert recall_at_k(ranks, 1000).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad):
    sims = random_sims(4, 5, seed=0)
    sims[2, 7] = bad
    for fn in (i2t_ranks, t2i_ranks, retrieval_metrics):
        with pytest.raises(ValueError, match="NaN or inf"):
            fn(sims)
    with pytest.raises(ValueError, match="NaN or inf"):
        fold_metrics(sims, n_folds=2)


def test_finite_scores_whose_sum_overflows_are_accepted_and_ranked_as_scaled():
    # the quick finiteness test sums the scores; an overflowing sum falls back to the exact test
    sims = random_sims(4, 5, seed=1).float()
    huge = (sims.double() * 3e38 / float(sims.abs().max())).float()
    assert not torch.isfinite(huge.sum()) and bool(torch.isfinite(huge).all())
    assert torch.equal(i2t_ranks(huge), i2t_ranks(sims)) and torch.equal(t2i_ranks(huge), t2i_ranks(sims))


def test_non_finite_found_in_a_later_block():
    sims = random_sims(9, 2, seed=0)
    sims[8, 17] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        i2t_ranks(sims, captions_per_image=2, block_size=2)


@pytest.mark.parametrize(
    "sims,c,message",
    [
        (torch.zeros(10), 5, "2-D"),
        (torch.zeros(2, 3, 5), 5, "2-D"),
        (torch.zeros(3, 14), 5, "captions_per_image"),
        (torch.zeros(3, 15), 0, "captions_per_image"),
        (torch.zeros(3, 15, dtype=torch.long), 5, "floating"),
        (torch.zeros(0, 0), 5, "empty"),
    ],
)
def test_bad_input_raises(sims, c, message):
    with pytest.raises(ValueError, match=message):
        i2t_ranks(sims, captions_per_image=c)
    with pytest.raises(ValueError, match=message):
        t2i_ranks(sims, captions_per_image=c)


def test_bad_ranks_and_k_raise():
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(torch.tensor([0.0, 1.0]), 1)
    with pytest.raises(ValueError, match="negative"):
        summarize(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.tensor([], dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="block_size"):
        i2t_ranks(torch.zeros(2, 10), block_size=0)
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(torch.tensor([0, 1]), True)
    with pytest.raises(ValueError, match="integer"):
        recall_at_k(torch.tensor([0, 1]), 2.5)
    # numpy integers are integers.
    assert recall_at_k(torch.tensor([0, 7]), np.int64(5)).tolist() == [1.0, 0.0]
    assert fold_metrics(torch.zeros(2, 10), n_folds=np.int64(2))["i2t_r1"] == 100.0


def test_gradients_and_strided_inputs_are_fine():
    base = random_sims(6, 1, seed=5)
    sims = base.clone().requires_grad_(True)
    ranks = i2t_ranks(sims, captions_per_image=1)
    assert not ranks.requires_grad
    # A transposed view (non-contiguous) gives the same answer as its contiguous copy.
    flipped = base.T  # (6, 6) square, so both layouts are valid inputs
    assert not flipped.is_contiguous()
    assert torch.equal(t2i_ranks(flipped, captions_per_image=1), t2i_ranks(flipped.contiguous(), captions_per_image=1))
    assert torch.equal(i2t_ranks(flipped, captions_per_image=1), i2t_ranks(flipped.contiguous(), captions_per_image=1))


# --------------------------------------------------------------------------- 4. properties


@HYPOTHESIS
@given(
    ranks=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40),
    k1=st.integers(min_value=1, max_value=70),
    k2=st.integers(min_value=1, max_value=70),
)
def test_recall_never_decreases_with_k(ranks, k1, k2):
    lo, hi = sorted((k1, k2))
    ranks_t = torch.tensor(ranks)
    assert bool((recall_at_k(ranks_t, lo) <= recall_at_k(ranks_t, hi)).all())


@HYPOTHESIS
@given(
    n_img=st.integers(min_value=1, max_value=8),
    c=st.integers(min_value=1, max_value=3),
    levels=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_recall_ordering_in_metrics(n_img, c, levels, seed):
    got = retrieval_metrics(grid_sims(n_img, c, seed, levels), captions_per_image=c)
    assert got["i2t_r1"] <= got["i2t_r5"] <= got["i2t_r10"]
    assert got["t2i_r1"] <= got["t2i_r5"] <= got["t2i_r10"]


@HYPOTHESIS
@given(
    n_img=st.integers(min_value=1, max_value=8),
    c=st.integers(min_value=1, max_value=3),
    levels=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_permuting_the_gallery_changes_nothing(n_img, c, levels, seed):
    sims = grid_sims(n_img, c, seed, levels)  # ties included: counting is order-free
    gen = torch.Generator().manual_seed(seed)
    img_perm = torch.randperm(n_img, generator=gen)
    # Image a of the new order is old image img_perm[a]; its caption block moves with
    # it, and the captions inside each block are shuffled too.
    cap_perm = torch.cat([img_perm[a] * c + torch.randperm(c, generator=gen) for a in range(n_img)])
    shuffled = sims[img_perm][:, cap_perm]
    assert torch.equal(i2t_ranks(shuffled, captions_per_image=c), i2t_ranks(sims, captions_per_image=c)[img_perm])
    assert torch.equal(t2i_ranks(shuffled, captions_per_image=c), t2i_ranks(sims, captions_per_image=c)[cap_perm])
    assert_metrics_close(
        retrieval_metrics(shuffled, captions_per_image=c), retrieval_metrics(sims, captions_per_image=c), tol=1e-9
    )


@HYPOTHESIS
@given(
    n_img=st.integers(min_value=1, max_value=8),
    c=st.integers(min_value=1, max_value=3),
    levels=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_float32_and_float64_agree(n_img, c, levels, seed):
    sims = grid_sims(n_img, c, seed, levels)
    assert_metrics_close(
        retrieval_metrics(sims.float(), captions_per_image=c),
        retrieval_metrics(sims, captions_per_image=c),
        tol=1e-9,
    )


# --------------------------------------------------------------------------- 5. dtype and device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_devices(dtype, device):
    c = 5
    sims = random_sims(20, c, seed=21, dtype=dtype, device=device)
    # Low precision creates ties: compare with the tie-aware loop on the exact stored values.
    arr = sims.to(device="cpu", dtype=torch.float64).numpy()
    got_i2t = i2t_ranks(sims, captions_per_image=c, block_size=3)
    got_t2i = t2i_ranks(sims, captions_per_image=c, block_size=3)
    assert got_i2t.device == sims.device and got_t2i.device == sims.device
    np.testing.assert_array_equal(got_i2t.cpu().numpy(), naive_i2t_count(arr, c))
    np.testing.assert_array_equal(got_t2i.cpu().numpy(), naive_t2i_count(arr, c))
    assert recall_at_k(got_i2t, 5).device == sims.device
    assert_metrics_close(
        fold_metrics(sims, n_folds=4),
        fold_metrics(torch.from_numpy(arr), n_folds=4),
    )


# --------------------------------------------------------------------------- 6. large matrices


def test_blocked_equals_unblocked_on_a_large_matrix():
    n_img, c = 1000, 5
    sims = random_sims(n_img, c, seed=99, dtype=torch.float32)
    whole = {"block_size": n_img}  # one block: the unblocked computation
    for blocks in (7, 128):
        assert torch.equal(i2t_ranks(sims, block_size=blocks), i2t_ranks(sims, **whole))
        assert torch.equal(t2i_ranks(sims, block_size=blocks), t2i_ranks(sims, **whole))
    assert retrieval_metrics(sims) == retrieval_metrics(sims, **whole)
    assert fold_metrics(sims, block_size=7) == fold_metrics(sims, **whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="memory is measured on CUDA only")
def test_blocked_memory_stays_bounded_on_cuda():
    n_img, c = 2000, 5
    sims = random_sims(n_img, c, seed=1, dtype=torch.float32, device="cuda")
    matrix_bytes = sims.numel() * sims.element_size()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    retrieval_metrics(sims, block_size=16)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    # A 16-row block of booleans is 160 KB; the whole boolean matrix would be 20 MB.
    assert extra < matrix_bytes // 8
