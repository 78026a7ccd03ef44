"""Tests for xmrbench.core.metrics.labels (label-based retrieval: AP, precision@k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xmrbench.core.metrics.labels import (
    average_precision,
    mean_average_precision,
    precision_at_k,
    relevance_from_labels,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
HYPOTHESIS = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------- naive references


def naive_order(scores: list[float]) -> list[int]:
    """Gallery indices by decreasing score, equal scores in gallery order (valid without ties)."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))


def pessimistic_positions(scores: list[float], rel: list[bool]) -> list[int]:
    """1-based position of every relevant item under the tie rule, counted explicitly.

    A relevant item with score s sits after every item scoring more than s, after
    every irrelevant item scoring exactly s, and after the relevant items scoring
    exactly s that come before it (their order does not change AP or precision).
    """
    out = []
    for j in range(len(scores)):
        if not rel[j]:
            continue
        above = sum(1 for i in range(len(scores)) if scores[i] > scores[j])
        tied_irrelevant = sum(1 for i in range(len(scores)) if scores[i] == scores[j] and not rel[i])
        tied_relevant_before = sum(1 for i in range(j) if scores[i] == scores[j] and rel[i])
        out.append(above + tied_irrelevant + tied_relevant_before + 1)
    return sorted(out)


def relevant_positions(scores: list[float], rel: list[bool], ties: str) -> list[int]:
    if ties == "pessimistic":
        return pessimistic_positions(scores, rel)
    order = naive_order(scores)
    return [position for position, j in enumerate(order, start=1) if rel[j]]


def naive_ap(sims: np.ndarray, rel: np.ndarray, at: int | None, normalize: str, ties: str = "pessimistic") -> np.ndarray:
    out = []
    for q in range(sims.shape[0]):
        positions = relevant_positions(list(sims[q]), list(rel[q]), ties)
        if at is not None:
            positions = [p for p in positions if p <= at]
        total = sum(hits / position for hits, position in enumerate(positions, start=1))
        z = len(positions) if normalize == "hits" else int(rel[q].sum())
        out.append(total / z if z else 0.0)
    return np.array(out)


def naive_precision(sims: np.ndarray, rel: np.ndarray, ks: list[int], ties: str = "pessimistic") -> np.ndarray:
    out = np.zeros((sims.shape[0], len(ks)))
    for q in range(sims.shape[0]):
        positions = relevant_positions(list(sims[q]), list(rel[q]), ties)
        for m, k in enumerate(ks):
            depth = min(k, sims.shape[1])
            out[q, m] = sum(p <= depth for p in positions) / depth
    return out


def naive_relevance(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    rel = np.zeros((len(query_labels), len(gallery_labels)), dtype=bool)
    for q in range(len(query_labels)):
        for g in range(len(gallery_labels)):
            if query_labels.ndim == 1:
                rel[q, g] = query_labels[q] == gallery_labels[g]
            else:
                rel[q, g] = any(a and b for a, b in zip(query_labels[q], gallery_labels[g], strict=True))
    return rel


def random_problem(n_q: int, n_g: int, seed: int, *, levels: int | None = None, n_classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    if levels is None:
        sims = torch.randn(n_q, n_g, generator=gen, dtype=torch.float64)
    else:  # a coarse dyadic grid: exact in every dtype, many ties
        sims = torch.randint(0, levels, (n_q, n_g), generator=gen).to(torch.float64) / 4.0
    q_labels = (torch.rand(n_q, n_classes, generator=gen) < 0.3).long()
    g_labels = (torch.rand(n_g, n_classes, generator=gen) < 0.3).long()
    return sims, relevance_from_labels(q_labels, g_labels)


SETTINGS = [(None, "relevant"), (None, "hits"), (3, "relevant"), (3, "hits"), (50, "hits"), (10_000, "relevant")]


# --------------------------------------------------------------------------- 1. hand-checked


def test_hand_checked_average_precision():
    sims = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    rel = torch.tensor([[True, False, True, False, False]])
    # Hits at positions 1 and 3: precisions 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6.
    assert average_precision(sims, rel).tolist() == pytest.approx([5 / 6])
    # Top 2 holds one hit (P@1 = 1). Normalised by the 2 relevant items: 1/2;
    # by the 1 hit found in the top 2 (ACMR "mAP@k"): 1.
    assert average_precision(sims, rel, at=2).tolist() == pytest.approx([0.5])
    assert average_precision(sims, rel, at=2, normalize="hits").tolist() == pytest.approx([1.0])
    # Precision of the top 1, 2, 3, 5 and "10" (= the whole gallery of 5).
    got = precision_at_k(sims, rel, [1, 2, 3, 5, 10])
    assert got[0].tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.4, 0.4])
    assert mean_average_precision(sims, rel) == pytest.approx(5 / 6)


def test_ties_count_against_relevant_items():
    sims = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    rel = torch.tensor([[False, False, True], [True, False, False]])
    # All tied: both irrelevant items rank first, wherever the relevant one sits -> AP 1/3.
    assert average_precision(sims, rel).tolist() == pytest.approx([1 / 3, 1 / 3])
    assert precision_at_k(sims, rel, [1, 2, 3]).flatten().tolist() == pytest.approx([0.0, 0.0, 1 / 3] * 2)
    # A tie group inside a ranking: 0.9 (irrelevant) first, then the tied 0.5s with
    # the irrelevant item 2 before the relevant items 1 and 3 -> hits at 3 and 4.
    sims = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1]])
    rel = torch.tensor([[False, True, False, True, False]])
    assert average_precision(sims, rel).tolist() == pytest.approx([(1 / 3 + 2 / 4) / 2])
    assert average_precision(sims, rel, at=3, normalize="hits").tolist() == pytest.approx([1 / 3])
    assert precision_at_k(sims, rel, [2, 3, 4])[0].tolist() == pytest.approx([0.0, 1 / 3, 2 / 4])


def test_constant_scores_give_the_pessimistic_map_in_any_gallery_order():
    rel = torch.tensor([[True, True, False, False, False], [False, True, False, False, True]])
    sims = torch.full((2, 5), 0.25)
    # 2 relevant of 5, all tied: positions 4 and 5 -> AP = (1/4 + 2/5) / 2 = 0.325.
    want = (1 / 4 + 2 / 5) / 2
    assert mean_average_precision(sims, rel) == pytest.approx(want)
    for perm in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        assert mean_average_precision(sims[:, perm], rel[:, perm]) == pytest.approx(want)
        assert torch.equal(precision_at_k(sims[:, perm], rel[:, perm], [1, 4]), precision_at_k(sims, rel, [1, 4]))
    assert precision_at_k(sims, rel, [1, 3, 4, 5]).flatten().tolist() == pytest.approx([0.0, 0.0, 0.25, 0.4] * 2)


def test_queries_without_relevant_items_get_zero():
    sims = torch.tensor([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    rel = torch.tensor([[False, False, False], [False, False, True]])
    for at, normalize in SETTINGS:
        got = average_precision(sims, rel, at=at, normalize=normalize)
        assert got[0].item() == 0.0
    # Row 1 has a relevant item but not in the top 2: zero under either normalisation.
    assert average_precision(sims, rel, at=2, normalize="hits").tolist() == [0.0, 0.0]
    assert average_precision(sims, rel, at=2).tolist() == [0.0, 0.0]
    assert torch.allclose(precision_at_k(sims, rel, [1, 3]), torch.tensor([[0.0, 0.0], [0.0, 1 / 3]]))


def test_relevance_from_single_labels():
    got = relevance_from_labels(torch.tensor([0, 2]), torch.tensor([2, 0, 1, 2]))
    assert got.dtype == torch.bool
    assert got.tolist() == [[False, True, False, False], [True, False, False, True]]


def test_relevance_from_multi_hot_labels():
    query = torch.tensor([[1, 0, 1], [0, 0, 0]])
    gallery = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    # Query 0 shares class 2 with items 0 and 2; query 1 has no label at all.
    got = relevance_from_labels(query, gallery.long())
    assert got.tolist() == [[True, False, True], [False, False, False]]
    assert torch.equal(relevance_from_labels(query.bool(), gallery), got)


# --------------------------------------------------------------------------- 2. naive agreement


@pytest.mark.parametrize("n_q,n_g,levels", [(7, 13, None), (40, 90, None), (25, 60, 4), (9, 2, 2)])
@pytest.mark.parametrize("at,normalize", SETTINGS)
def test_average_precision_matches_naive_loop(n_q, n_g, levels, at, normalize):
    sims, rel = random_problem(n_q, n_g, seed=n_q + n_g, levels=levels)
    got = average_precision(sims, rel, at=at, normalize=normalize)
    np.testing.assert_allclose(got.numpy(), naive_ap(sims.numpy(), rel.numpy(), at, normalize), atol=1e-6)
    if levels is None:  # no ties: the tie rule plays no part, a plain sorted loop agrees
        assert len(np.unique(sims.numpy())) == sims.numel()
        want = naive_ap(sims.numpy(), rel.numpy(), at, normalize, ties="gallery")
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


@pytest.mark.parametrize("n_q,n_g,levels", [(7, 13, None), (40, 90, None), (25, 60, 4)])
def test_precision_at_k_matches_naive_loop(n_q, n_g, levels):
    sims, rel = random_problem(n_q, n_g, seed=3 * n_q, levels=levels)
    ks = [1, 5, 10, 20, 50, 100]
    got = precision_at_k(sims, rel, ks)
    assert got.shape == (n_q, len(ks))
    np.testing.assert_allclose(got.numpy(), naive_precision(sims.numpy(), rel.numpy(), ks), atol=1e-6)
    if levels is None:
        want = naive_precision(sims.numpy(), rel.numpy(), ks, ties="gallery")
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2, 3, 8])
@pytest.mark.parametrize("at,normalize", SETTINGS)
def test_many_ties_match_the_explicit_rule(levels, at, normalize):
    sims, rel = random_problem(30, 70, seed=levels, levels=levels)
    want = naive_ap(sims.numpy(), rel.numpy(), at, normalize)
    for block in (None, 4):
        got = average_precision(sims, rel, at=at, normalize=normalize, block_size=block)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    # the gallery-order loop disagrees somewhere: the rule is doing something
    if levels <= 3 and at is None:
        gallery = naive_ap(sims.numpy(), rel.numpy(), at, normalize, ties="gallery")
        assert (gallery > want + 1e-9).any() and (gallery >= want - 1e-9).all()
    ks = [1, 2, 5, 30, 70]
    np.testing.assert_allclose(
        precision_at_k(sims, rel, ks, block_size=7).numpy(), naive_precision(sims.numpy(), rel.numpy(), ks), atol=1e-6
    )


@pytest.mark.parametrize("n_classes", [1, 3, 10])
def test_relevance_matches_naive_loop(n_classes):
    gen = torch.Generator().manual_seed(n_classes)
    q_single = torch.randint(0, n_classes, (11,), generator=gen)
    g_single = torch.randint(0, n_classes, (17,), generator=gen)
    assert np.array_equal(
        relevance_from_labels(q_single, g_single).numpy(), naive_relevance(q_single.numpy(), g_single.numpy())
    )
    q_multi = (torch.rand(11, n_classes, generator=gen) < 0.4).int()
    g_multi = (torch.rand(17, n_classes, generator=gen) < 0.4).int()
    assert np.array_equal(
        relevance_from_labels(q_multi, g_multi).numpy(), naive_relevance(q_multi.numpy(), g_multi.numpy())
    )


# --------------------------------------------------------------------------- 3. edge cases


def test_k_larger_than_gallery_uses_whole_gallery():
    sims, rel = random_problem(6, 8, seed=1)
    for normalize in ("relevant", "hits"):
        assert torch.equal(
            average_precision(sims, rel, at=100, normalize=normalize), average_precision(sims, rel, normalize=normalize)
        )
    whole = rel.sum(dim=1, keepdim=True).to(torch.float64) / 8
    assert torch.allclose(precision_at_k(sims, rel, [8, 9, 1000]), whole.expand(6, 3))


def test_single_gallery_item_and_single_query():
    sims = torch.tensor([[0.2]])
    assert average_precision(sims, torch.tensor([[True]])).tolist() == [1.0]
    assert average_precision(sims, torch.tensor([[False]])).tolist() == [0.0]
    assert precision_at_k(sims, torch.tensor([[True]]), [1, 5]).tolist() == [[1.0, 1.0]]


def test_with_whole_list_both_normalisations_agree():
    sims, rel = random_problem(20, 30, seed=8)
    assert torch.equal(average_precision(sims, rel), average_precision(sims, rel, normalize="hits"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_raise(bad):
    sims, rel = random_problem(4, 6, seed=0)
    sims[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        average_precision(sims, rel)
    with pytest.raises(ValueError, match="NaN or inf"):
        precision_at_k(sims, rel, [1])


def test_bad_arguments_raise():
    sims, rel = random_problem(4, 6, seed=0)
    with pytest.raises(ValueError, match="bool"):
        average_precision(sims, rel.long())
    with pytest.raises(ValueError, match="shape"):
        average_precision(sims, rel[:, :5])
    with pytest.raises(ValueError, match="normalize"):
        average_precision(sims, rel, normalize="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at must be >= 1"):
        average_precision(sims, rel, at=0)
    with pytest.raises(ValueError, match="sequence"):
        precision_at_k(sims, rel, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        precision_at_k(sims, rel, [])
    with pytest.raises(ValueError, match="2-D"):
        average_precision(sims[0], rel[0])


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="both"):
        relevance_from_labels(torch.tensor([0, 1]), torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="integer class ids"):
        relevance_from_labels(torch.tensor([0.0, 1.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="0/1"):
        relevance_from_labels(torch.tensor([[0, 2]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="classes"):
        relevance_from_labels(torch.tensor([[0, 1]]), torch.tensor([[0, 1, 1]]))


# --------------------------------------------------------------------------- 4. properties


problem_args = dict(
    n_q=st.integers(min_value=1, max_value=6),
    n_g=st.integers(min_value=1, max_value=25),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)


@HYPOTHESIS
@given(**problem_args, ks=st.lists(st.integers(min_value=1, max_value=30), min_size=2, max_size=6))
def test_hits_never_decrease_as_k_grows(n_q, n_g, seed, ks):
    sims, rel = random_problem(n_q, n_g, seed=seed, levels=3)
    ks = sorted(ks)
    precision = precision_at_k(sims, rel, ks)
    found = precision * torch.tensor([min(k, n_g) for k in ks], dtype=precision.dtype)
    assert bool((found[:, 1:] >= found[:, :-1] - 1e-9).all())
    # Recall at k (hits over all relevant items) never falls either.
    relevant = rel.sum(dim=1, keepdim=True).clamp_min(1)
    recall = found / relevant
    assert bool((recall[:, 1:] >= recall[:, :-1] - 1e-9).all())


@HYPOTHESIS
@given(**problem_args, at=st.one_of(st.none(), st.integers(min_value=1, max_value=30)))
def test_permuting_the_gallery_changes_nothing(n_q, n_g, seed, at):
    # Continuous scores: no ties, so the ranking does not depend on gallery order.
    sims, rel = random_problem(n_q, n_g, seed=seed)
    perm = torch.randperm(n_g, generator=torch.Generator().manual_seed(seed))
    for normalize in ("relevant", "hits"):
        assert torch.allclose(
            average_precision(sims[:, perm], rel[:, perm], at=at, normalize=normalize),
            average_precision(sims, rel, at=at, normalize=normalize),
            atol=1e-12,
        )
    assert torch.allclose(precision_at_k(sims[:, perm], rel[:, perm], [1, 3, 7]), precision_at_k(sims, rel, [1, 3, 7]))


@HYPOTHESIS
@given(**problem_args, at=st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
       levels=st.integers(min_value=1, max_value=4))
def test_permuting_the_gallery_changes_nothing_with_ties(n_q, n_g, seed, at, levels):
    # Tied scores: the pessimistic rule makes the ranking independent of gallery order too.
    sims, rel = random_problem(n_q, n_g, seed=seed, levels=levels)
    perm = torch.randperm(n_g, generator=torch.Generator().manual_seed(seed + 1))
    for normalize in ("relevant", "hits"):
        assert torch.equal(
            average_precision(sims[:, perm], rel[:, perm], at=at, normalize=normalize),
            average_precision(sims, rel, at=at, normalize=normalize),
        )
    assert torch.equal(precision_at_k(sims[:, perm], rel[:, perm], [1, 3, 7]), precision_at_k(sims, rel, [1, 3, 7]))


@HYPOTHESIS
@given(**problem_args, levels=st.integers(min_value=1, max_value=50))
def test_float32_and_float64_agree(n_q, n_g, seed, levels):
    sims, rel = random_problem(n_q, n_g, seed=seed, levels=levels)
    for at, normalize in SETTINGS:
        single = average_precision(sims.float(), rel, at=at, normalize=normalize)
        double = average_precision(sims, rel, at=at, normalize=normalize)
        assert single.dtype == torch.float32 and double.dtype == torch.float64
        assert torch.allclose(single.double(), double, atol=1e-6)


# --------------------------------------------------------------------------- 5. dtype and device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_devices(dtype, device):
    sims64, rel = random_problem(12, 40, seed=5)
    sims = sims64.to(dtype=dtype, device=device)
    rel = rel.to(device)
    exact = sims.to(device="cpu", dtype=torch.float64).numpy()  # the stored values, ties and all
    for at, normalize in SETTINGS:
        got = average_precision(sims, rel, at=at, normalize=normalize, block_size=5)
        assert got.device == sims.device
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        want = naive_ap(exact, rel.cpu().numpy(), at, normalize)
        np.testing.assert_allclose(got.cpu().double().numpy(), want, atol=1e-6)
    got = precision_at_k(sims, rel, [1, 10, 100], block_size=5)
    assert got.device == sims.device
    np.testing.assert_allclose(
        got.cpu().double().numpy(), naive_precision(exact, rel.cpu().numpy(), [1, 10, 100]), atol=1e-6
    )
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]], device=device)
    assert relevance_from_labels(labels, labels).device == labels.device


# --------------------------------------------------------------------------- 6. large matrices


def test_blocked_equals_unblocked_on_a_large_matrix():
    sims, rel = random_problem(300, 2000, seed=42, levels=64)
    for at, normalize in ((None, "relevant"), (50, "hits")):
        whole = average_precision(sims, rel, at=at, normalize=normalize, block_size=300)
        for blocks in (7, None):
            assert torch.equal(average_precision(sims, rel, at=at, normalize=normalize, block_size=blocks), whole)
    ks = [1, 10, 100, 1000]
    assert torch.equal(precision_at_k(sims, rel, ks, block_size=7), precision_at_k(sims, rel, ks, block_size=300))
