"""Tests of xmrbench.core.losses: hand-checked values, agreement with naive loop
implementations (values and gradients), edge cases, parameters and the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from xmrbench.core.losses.base import RetrievalLoss, positive_mask
from xmrbench.core.losses.bidirectional_ranking import (
    DIST_EPS,
    BidirectionalRankingLoss,
)
from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.losses.logistic import LogisticLoss
from xmrbench.core.losses.registry import LOSSES, build_loss
from xmrbench.core.losses.triplet_sum import TripletSumLoss
from xmrbench.errors import RegistryError
from xmrbench.registry import Registry

DTYPES = [torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
BATCH_KINDS = ["diag5", "diag8", "captions", "captions_orphans", "shared_images"]
TOL = {"rtol": 1e-5, "atol": 1e-5}
# The three hinge losses, with every term of the bidirectional loss switched on.
ALL_HINGE = [
    ("triplet_sum", {}),
    ("hardest_negative", {}),
    ("bidirectional_ranking", {"lambda3": 1.0, "lambda4": 1.0}),
]


@pytest.fixture(autouse=True)
def _restore_global_rng():
    """The logistic loss samples from torch's global RNG, which some tests seed; give the
    state back afterwards so that no test leaks its seed into another."""
    with torch.random.fork_rng():
        yield


# --------------------------------------------------------------------------- batches


def make_batch(kind: str, seed: int, dtype: torch.dtype, device: str, dim: int = 6):
    """Random L2-normalised embeddings (leaf tensors requiring grad) and labels.

    diag5 / diag8: one caption per image, ``labels=None``.
    captions: 4 images with 2-3 captions each, images and texts in shuffled order.
    captions_orphans: 3 images with 2-3 captions each plus 2 texts whose image is not
        in the batch (negatives of every image).
    shared_images: several images carry the same label, so images have neighbours.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind.startswith("diag"):
        n_img = n_txt = int(kind[4:])
        labels = None
    else:
        if kind == "shared_images":
            img_ids = [5, 5, 7, 9, 9]
            per_label = {5: 2, 7: 2, 9: 3}
            txt_ids = [lab for lab, n in per_label.items() for _ in range(n)]
        else:
            n_images = 4 if kind == "captions" else 3
            img_ids = (100 + torch.randperm(50, generator=gen)[:n_images]).tolist()
            txt_ids = []
            for lab in img_ids:
                txt_ids += [lab] * int(torch.randint(2, 4, (1,), generator=gen))
            if kind == "captions_orphans":
                txt_ids += [7, 8]
        img_ids = [img_ids[k] for k in torch.randperm(len(img_ids), generator=gen).tolist()]
        txt_ids = [txt_ids[k] for k in torch.randperm(len(txt_ids), generator=gen).tolist()]
        n_img, n_txt = len(img_ids), len(txt_ids)
        labels = (
            torch.tensor(img_ids, dtype=torch.long, device=device),
            torch.tensor(txt_ids, dtype=torch.long, device=device),
        )
    img = F.normalize(torch.randn(n_img, dim, generator=gen, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(n_txt, dim, generator=gen, dtype=torch.float64), dim=1)
    img = img.to(dtype=dtype, device=device).requires_grad_()
    txt = txt.to(dtype=dtype, device=device).requires_grad_()
    return img, txt, labels


def grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Autograd gradients of ``loss``; zeros where the loss does not depend on an input."""
    if not loss.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    out = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, out)]


def assert_matches_naive(loss_fn, naive_fn, img, txt) -> None:
    """Value and gradients w.r.t. both embeddings of ``loss_fn`` equal those of ``naive_fn``."""
    value = loss_fn(img, txt)
    expected = naive_fn(img, txt)
    assert value.dim() == 0 and value.dtype == img.dtype
    torch.testing.assert_close(value.detach(), expected.detach().to(value.dtype), **TOL)
    for got, want in zip(grads(value, [img, txt]), grads(expected, [img, txt])):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **TOL)


# --------------------------------------------------------------------------- naive loops
# Written independently of the library: explicit for-loops over every triplet, Python
# branching for the hinge (a violation counts only when it is > 0), sorting per
# (anchor, positive) pair for top-K.


def naive_positive(n_img: int, n_txt: int, labels) -> list[list[bool]]:
    if labels is None:
        return [[i == j for j in range(n_txt)] for i in range(n_img)]
    img_ids, txt_ids = labels[0].tolist(), labels[1].tolist()
    return [[img_ids[i] == txt_ids[j] for j in range(n_txt)] for i in range(n_img)]


def zero_like(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def naive_reduce(total, n_pos, reduction):
    return total / max(n_pos, 1) if reduction == "mean" else total


def naive_vse(img, txt, labels, *, margin, reduction, hardest):
    """VSE hinge loss with dot-product similarities, summed or hardest negative."""
    n_img, n_txt = img.shape[0], txt.shape[0]
    pos = naive_positive(n_img, n_txt, labels)
    sims = [[(img[i] * txt[j]).sum() for j in range(n_txt)] for i in range(n_img)]
    total, n_pos = zero_like(img), 0
    for i in range(n_img):
        for j in range(n_txt):
            if not pos[i][j]:
                continue
            n_pos += 1
            i2t = [margin - sims[i][j] + sims[i][k] for k in range(n_txt) if not pos[i][k]]
            t2i = [margin - sims[i][j] + sims[k][j] for k in range(n_img) if not pos[k][j]]
            for violations in (i2t, t2i):
                if hardest:
                    worst = max(violations, key=lambda v: v.item(), default=None)
                    if worst is not None and worst.item() > 0:
                        total = total + worst
                else:
                    for v in violations:
                        if v.item() > 0:
                            total = total + v
    return naive_reduce(total, n_pos, reduction)


def naive_distance(a, b):
    return torch.sqrt(((a - b) ** 2).sum() + DIST_EPS)


def naive_top_k_sum(violations, top_k, zero):
    kept = sorted((v for v in violations if v.item() > 0), key=lambda v: v.item(), reverse=True)
    if top_k is not None:
        kept = kept[:top_k]
    total = zero
    for v in kept:
        total = total + v
    return total


def naive_bidirectional(img, txt, labels, *, margin=0.1, lambda1=1.0, lambda2=2.0,
                        lambda3=0.0, lambda4=0.0, top_k=50, reduction="sum"):
    n_img, n_txt = img.shape[0], txt.shape[0]
    pos = naive_positive(n_img, n_txt, labels)
    zero = zero_like(img)
    d_xy = [[naive_distance(img[i], txt[j]) for j in range(n_txt)] for i in range(n_img)]
    d_xx = [[naive_distance(img[i], img[j]) for j in range(n_img)] for i in range(n_img)]
    d_yy = [[naive_distance(txt[i], txt[j]) for j in range(n_txt)] for i in range(n_txt)]
    t1 = t2 = t3 = t4 = zero
    n_pos = 0
    for i in range(n_img):
        for j in range(n_txt):
            if not pos[i][j]:
                continue
            n_pos += 1
            v1 = [margin + d_xy[i][j] - d_xy[i][k] for k in range(n_txt) if not pos[i][k]]
            v2 = [margin + d_xy[i][j] - d_xy[k][j] for k in range(n_img) if not pos[k][j]]
            t1 = t1 + naive_top_k_sum(v1, top_k, zero)
            t2 = t2 + naive_top_k_sum(v2, top_k, zero)

    def img_nb(a, b):  # images described by a common text of the batch
        return a != b and any(pos[a][t] and pos[b][t] for t in range(n_txt))

    def txt_nb(a, b):  # texts describing a common image of the batch
        return a != b and any(pos[x][a] and pos[x][b] for x in range(n_img))

    for a in range(n_img):
        for b in range(n_img):
            if img_nb(a, b):
                v = [margin + d_xx[a][b] - d_xx[a][k]
                     for k in range(n_img) if k != a and not img_nb(a, k)]
                t3 = t3 + naive_top_k_sum(v, top_k, zero)
    for a in range(n_txt):
        for b in range(n_txt):
            if txt_nb(a, b):
                v = [margin + d_yy[a][b] - d_yy[a][k]
                     for k in range(n_txt) if k != a and not txt_nb(a, k)]
                t4 = t4 + naive_top_k_sum(v, top_k, zero)
    total = lambda1 * t1 + lambda2 * t2 + lambda3 * t3 + lambda4 * t4
    return naive_reduce(total, n_pos, reduction)


# --------------------------------------------------------------------------- hand-checked


def test_triplet_sum_and_hardest_hand_checked_sims():
    # m = 0.2, positives on the diagonal. Violations m - s(i,i) + s(neg):
    #   pair 0 (s=.6): i2t {.5 -> .1, .1 -> -.3}     t2i {.7 -> .3, .2 -> -.2}
    #   pair 1 (s=.4): i2t {.7 -> .5, .3 -> .1}      t2i {.5 -> .3, .9 -> .7}
    #   pair 2 (s=.8): i2t {.2 -> -.4, .9 -> .3}     t2i {.1 -> -.5, .3 -> -.3}
    # sum of the positive parts = .1 + .3 + .6 + 1.0 + .3 = 2.3
    # hardest per direction     = (.1 + .3) + (.5 + .7) + (.3 + 0) = 1.9
    sims = torch.tensor([[0.6, 0.5, 0.1], [0.7, 0.4, 0.3], [0.2, 0.9, 0.8]], dtype=torch.float64)
    emb = torch.zeros(3, 4, dtype=torch.float64)
    assert build_loss("triplet_sum", {})(emb, emb, sims=sims).item() == pytest.approx(2.3)
    assert build_loss("hardest_negative", {})(emb, emb, sims=sims).item() == pytest.approx(1.9)
    mean = build_loss("triplet_sum", {"reduction": "mean"})(emb, emb, sims=sims)
    assert mean.item() == pytest.approx(2.3 / 3)


def test_triplet_hand_checked_with_labels():
    # img0 = (1,0) label 7, img1 = (0,1) label 9; t0 = (1,0) and t1 = (.6,.8) describe
    # img0, t2 = (.8,.6) describes img1. sims: row0 = (1, .6, .8), row1 = (0, .8, .6).
    # m = 0.2; t1 is NOT a negative of img0 (same label).
    #   (img0,t0) s=1 : i2t t2 -> .2-1+.8=0      t2i img1 -> .2-1+0 <0
    #   (img0,t1) s=.6: i2t t2 -> .2-.6+.8=.4    t2i img1 -> .2-.6+.8=.4
    #   (img1,t2) s=.6: i2t t0 -> <0, t1 -> .4    t2i img0 -> .2-.6+.8=.4
    # triplet_sum = 1.6; every pair has at most one violation per direction, so the
    # hardest-negative loss is also 1.6.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    labels = (torch.tensor([7, 9]), torch.tensor([7, 7, 9]))
    assert build_loss("triplet_sum", {})(img, txt, labels=labels).item() == pytest.approx(1.6)
    assert build_loss("hardest_negative", {})(img, txt, labels=labels).item() == pytest.approx(1.6)
    mean = build_loss("hardest_negative", {"reduction": "mean"})(img, txt, labels=labels)
    assert mean.item() == pytest.approx(1.6 / 3)


def test_triplet_tied_scores():
    # All 9 similarities equal: every violation is exactly m = 0.2. Three pairs with two
    # negatives per direction: triplet_sum = 3 * 4 * 0.2 = 2.4, hardest = 3 * 2 * 0.2 = 1.2.
    sims = torch.full((3, 3), 0.3, dtype=torch.float64, requires_grad=True)
    emb = torch.zeros(3, 2, dtype=torch.float64)
    total = build_loss("triplet_sum", {})(emb, emb, sims=sims)
    hardest = build_loss("hardest_negative", {})(emb, emb, sims=sims)
    assert total.item() == pytest.approx(2.4)
    assert hardest.item() == pytest.approx(1.2)
    (g,) = torch.autograd.grad(total + hardest, [sims])
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("name,params", ALL_HINGE)
def test_margin_zero_with_tied_scores_gives_zero_loss_and_zero_grad(name, params):
    # m = 0 and every score tied: each triplet sits exactly on the hinge, [0]_+ = 0. A
    # loss of 0 must not push anything (the gradient of [t]_+ at t = 0 is taken as 0).
    emb = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    value = build_loss(name, {**params, "margin": 0.0})(emb, emb)
    assert value.item() == 0.0
    (g,) = torch.autograd.grad(value, [emb])
    assert torch.equal(g, torch.zeros_like(g))


def test_bidirectional_hand_checked_top_k():
    # Points on a line: images at 0, 10, 20; texts at 1, 11, 21 (pairs on the diagonal).
    # m = 25. Image-anchored, d(pos) = 1 everywhere:
    #   x0: negatives y1 (d=11) -> 15, y2 (d=21) -> 5      sum 20, top-1 15
    #   x1: negatives y0 (d=9)  -> 17, y2 (d=11) -> 15     sum 32, top-1 17
    #   x2: negatives y0 (d=19) -> 7,  y1 (d=9)  -> 17     sum 24, top-1 17
    # lambda1 term: 76 (all) or 49 (K=1); the text-anchored term is the mirror image
    # (76 / 49). With lambda1 = 1, lambda2 = 2: 228 (all) and 147 (K=1).
    img = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [11.0, 0.0], [21.0, 0.0]], dtype=torch.float64)
    loss_all = build_loss("bidirectional_ranking", {"margin": 25.0, "top_k": None})
    loss_top1 = build_loss("bidirectional_ranking", {"margin": 25.0, "top_k": 1})
    only_img = build_loss("bidirectional_ranking", {"margin": 25.0, "lambda2": 0.0, "top_k": 1})
    assert loss_all(img, txt).item() == pytest.approx(228.0)
    assert loss_top1(img, txt).item() == pytest.approx(147.0)
    assert only_img(img, txt).item() == pytest.approx(49.0)
    # K = 50 > 2 negatives keeps them all.
    default_k = build_loss("bidirectional_ranking", {"margin": 25.0})
    assert default_k(img, txt).item() == pytest.approx(228.0)


def test_bidirectional_hand_checked_neighbourhood_terms():
    # Text-text (Eq. 5): images at 0, 10; texts y0 = 1 and y1 = 2 describe img0, y2 = 12
    # describes img1. m = 12, only lambda4 = 1:
    #   anchor y0: neighbour y1 (d=1), non-neighbour y2 (d=11) -> 12+1-11 = 2
    #   anchor y1: neighbour y0 (d=1), non-neighbour y2 (d=10) -> 12+1-10 = 3
    #   anchor y2: no neighbour.                                  total 5
    img = torch.tensor([[0.0], [10.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0], [2.0], [12.0]], dtype=torch.float64)
    labels = (torch.tensor([0, 1]), torch.tensor([0, 0, 1]))
    text_only = {"margin": 12.0, "lambda1": 0.0, "lambda2": 0.0, "lambda4": 1.0}
    assert build_loss("bidirectional_ranking", text_only)(img, txt, labels=labels).item() == (
        pytest.approx(5.0)
    )
    # With one image per label no image has a neighbour: the lambda3 term is exactly 0.
    image_only = {"margin": 12.0, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 1.0}
    assert build_loss("bidirectional_ranking", image_only)(img, txt, labels=labels).item() == 0.0
    assert build_loss("bidirectional_ranking", image_only)(img, img).item() == 0.0

    # Image-image (Eq. 4): images x0 = 0 and x1 = 1 share label 0 (both described by
    # y0), x2 = 5 has label 1. m = 5, only lambda3 = 1:
    #   anchor x0: neighbour x1 (d=1), non-neighbour x2 (d=5) -> 5+1-5 = 1
    #   anchor x1: neighbour x0 (d=1), non-neighbour x2 (d=4) -> 5+1-4 = 2
    #   anchor x2: no neighbour.                                 total 3
    img = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    txt = torch.tensor([[0.0], [5.0]], dtype=torch.float64)
    labels = (torch.tensor([0, 0, 1]), torch.tensor([0, 1]))
    image_only = {"margin": 5.0, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 1.0}
    assert build_loss("bidirectional_ranking", image_only)(img, txt, labels=labels).item() == (
        pytest.approx(3.0)
    )


def test_logistic_hand_checked():
    # labels=None, two pairs: each image has exactly one negative text, so the single
    # draw per positive is forced. p = [[2, -1], [.5, 1]]:
    #   positives: log(1+e^-2) + log(1+e^-1) = 0.126928 + 0.313262
    #   negatives: (img0, t1) log(1+e^-1) = 0.313262; (img1, t0) log(1+e^.5) = 0.974077
    #   total = 1.727529
    sims = torch.tensor([[2.0, -1.0], [0.5, 1.0]], dtype=torch.float64)
    emb = torch.zeros(2, 3, dtype=torch.float64)
    expected = 2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2)) + math.log1p(math.exp(0.5))
    assert expected == pytest.approx(1.727529, abs=1e-6)
    assert build_loss("logistic", {})(emb, emb, sims=sims).item() == pytest.approx(expected)
    mean = build_loss("logistic", {"reduction": "mean"})(emb, emb, sims=sims)
    assert mean.item() == pytest.approx(expected / 2)


# --------------------------------------------------------------------------- vs naive loops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", BATCH_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["triplet_sum", "hardest_negative"])
@pytest.mark.parametrize(
    "params",
    [{}, {"margin": 0.0}, {"margin": 0.5, "reduction": "mean"}],
    ids=["default", "m0", "mean"],
)
def test_vse_losses_match_naive(name, params, seed, kind, dtype, device):
    img, txt, labels = make_batch(kind, seed, dtype, device)
    loss = build_loss(name, params)
    settings_ = {"margin": 0.2, "reduction": "sum", **params}
    assert_matches_naive(
        lambda a, b: loss(a, b, labels=labels),
        lambda a, b: naive_vse(a, b, labels, hardest=name == "hardest_negative", **settings_),
        img,
        txt,
    )


BIDIR_PARAMS = [
    {},
    {"margin": 0.5, "top_k": 2, "lambda3": 0.5, "lambda4": 0.3},
    {"margin": 0.4, "top_k": None, "lambda1": 0.0, "lambda2": 1.0, "lambda4": 1.0,
     "reduction": "mean"},
    {"margin": 0.0, "top_k": 1, "lambda3": 1.0, "lambda4": 1.0},
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", BATCH_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "params", BIDIR_PARAMS, ids=["default", "topk2_nb", "nbtext_mean", "m0_top1"]
)
def test_bidirectional_matches_naive(params, seed, kind, dtype, device):
    img, txt, labels = make_batch(kind, seed, dtype, device)
    loss = build_loss("bidirectional_ranking", params)
    assert_matches_naive(
        lambda a, b: loss(a, b, labels=labels),
        lambda a, b: naive_bidirectional(a, b, labels, **params),
        img,
        txt,
    )


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,params", ALL_HINGE)
def test_no_negatives_gives_zero_and_finite_grad(name, params, dtype, device):
    # Every image matches every text (one shared label): no triplet exists.
    img, txt, _ = make_batch("diag5", 3, dtype, device)
    labels = (torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    value = build_loss(name, params)(img, txt, labels=labels)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,params", ALL_HINGE)
def test_no_positives_gives_zero(name, params, dtype):
    img, txt, _ = make_batch("diag5", 4, dtype, "cpu")
    labels = (torch.arange(5), torch.arange(5) + 10)
    for reduction in ("sum", "mean"):
        value = build_loss(name, {**params, "reduction": reduction})(img, txt, labels=labels)
        assert value.item() == 0.0
        assert all(torch.isfinite(g).all() for g in grads(value, [img, txt]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,params", ALL_HINGE)
def test_single_pair(name, params, dtype):
    img, txt, _ = make_batch("diag5", 5, dtype, "cpu")
    value = build_loss(name, params)(img[:1], txt[:1])
    assert value.dim() == 0 and value.item() == 0.0
    assert all(torch.isfinite(g).all() for g in grads(value, [img, txt]))


@pytest.mark.parametrize("top_k", [7, 8, 50])
def test_bidirectional_top_k_at_least_negatives_keeps_all(top_k):
    # diag8: every anchor has 7 negatives, so K >= 7 is the full sum of Eq. 3.
    img, txt, _ = make_batch("diag8", 6, torch.float64, "cpu")
    params = {"margin": 1.0}
    full = build_loss("bidirectional_ranking", {**params, "top_k": None})(img, txt)
    capped = build_loss("bidirectional_ranking", {**params, "top_k": top_k})(img, txt)
    fewer = build_loss("bidirectional_ranking", {**params, "top_k": 2})(img, txt)
    assert capped.item() == pytest.approx(full.item())
    assert fewer.item() < full.item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bidirectional_finite_grad_when_embeddings_coincide(dtype, device):
    # img0 == txt0 (cross-modal distance 0), txt0 == txt1 (text neighbours at distance 0),
    # img1 == img2 sharing a label (image neighbours at distance 0).
    base = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]], dtype=torch.float64
    )
    img = torch.stack([base[0], base[1], base[1]]).to(dtype=dtype, device=device).requires_grad_()
    txt = torch.stack([base[0], base[0], base[2], base[3]]).to(dtype=dtype, device=device)
    txt.requires_grad_()
    labels = (
        torch.tensor([0, 1, 1], device=device),
        torch.tensor([0, 0, 1, 1], device=device),
    )
    params = {"margin": 0.3, "lambda3": 1.0, "lambda4": 1.0, "top_k": 2}
    value = build_loss("bidirectional_ranking", params)(img, txt, labels=labels)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()
    # ... and equal to the gradients of the naive loop there.
    img2 = img.detach().clone().requires_grad_()
    txt2 = txt.detach().clone().requires_grad_()
    expected = naive_bidirectional(img2, txt2, labels, **params)
    expected.backward()
    torch.testing.assert_close(value.detach(), expected.detach(), **TOL)
    torch.testing.assert_close(img.grad, img2.grad, **TOL)
    torch.testing.assert_close(txt.grad, txt2.grad, **TOL)


def test_bidirectional_all_embeddings_equal():
    # All distances are sqrt(eps), so every triplet violates by exactly m (tied scores).
    # 3 pairs, 2 negatives per anchor, both directions: (1 + 2) * 3 * 2 * 0.1 = 1.8.
    emb = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    value = build_loss("bidirectional_ranking", {})(emb, emb)
    assert value.item() == pytest.approx(1.8)
    (g,) = torch.autograd.grad(value, [emb])
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["triplet_sum", "hardest_negative"])
def test_sims_passed_equals_recomputed(name, dtype, device):
    img, txt, labels = make_batch("captions", 7, dtype, device)
    loss = build_loss(name, {})
    recomputed = loss(img, txt, labels=labels)
    passed = loss(img, txt, sims=img @ txt.T, labels=labels)
    torch.testing.assert_close(recomputed, passed)
    for a, b in zip(grads(recomputed, [img, txt]), grads(passed, [img, txt])):
        torch.testing.assert_close(a, b)


def test_sims_override_is_used():
    # A non-dot-product score (say, from cross attention) is used as given.
    img, txt, _ = make_batch("diag5", 8, torch.float64, "cpu")
    sims = -(img @ txt.T)
    loss = build_loss("triplet_sum", {})
    assert loss(img, txt, sims=sims).item() != pytest.approx(loss(img, txt).item())
    # Embeddings then only give the batch sizes; region-level shapes are fine.
    regions = torch.zeros(5, 36, 8, dtype=torch.float64)
    assert loss(regions, txt, sims=sims).item() == pytest.approx(loss(img, txt, sims=sims).item())


def test_bidirectional_ignores_sims():
    img, txt, labels = make_batch("captions", 9, torch.float64, "cpu")
    loss = build_loss("bidirectional_ranking", {"lambda4": 0.5})
    junk = torch.randn(img.shape[0], txt.shape[0], dtype=torch.float64)
    assert loss(img, txt, labels=labels, sims=junk).item() == loss(img, txt, labels=labels).item()


@pytest.mark.parametrize("name", ["triplet_sum", "hardest_negative", "bidirectional_ranking"])
def test_mean_is_sum_over_positive_pairs(name):
    img, txt, labels = make_batch("captions", 10, torch.float64, "cpu")
    total = build_loss(name, {})(img, txt, labels=labels)
    mean = build_loss(name, {"reduction": "mean"})(img, txt, labels=labels)
    assert mean.item() == pytest.approx(total.item() / txt.shape[0])  # one image per text


# --------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(BATCH_KINDS))
def test_property_invariant_to_batch_order(seed, kind):
    img, txt, labels = make_batch(kind, seed, torch.float64, "cpu")
    gen = torch.Generator().manual_seed(seed)
    perm_img = torch.randperm(img.shape[0], generator=gen)
    perm_txt = perm_img if labels is None else torch.randperm(txt.shape[0], generator=gen)
    labels_p = None if labels is None else (labels[0][perm_img], labels[1][perm_txt])
    for name, params in ALL_HINGE:
        loss = build_loss(name, params)
        a = loss(img, txt, labels=labels).item()
        b = loss(img[perm_img], txt[perm_txt], labels=labels_p).item()
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(BATCH_KINDS),
       margin=st.floats(0.0, 1.0))
def test_property_orderings(seed, kind, margin):
    img, txt, labels = make_batch(kind, seed, torch.float64, "cpu")
    total = build_loss("triplet_sum", {"margin": margin})(img, txt, labels=labels).item()
    hardest = build_loss("hardest_negative", {"margin": margin})(img, txt, labels=labels).item()
    assert 0.0 <= hardest <= total + 1e-12
    by_k = [
        build_loss("bidirectional_ranking", {"margin": margin, "top_k": k, "lambda4": 0.5})(
            img, txt, labels=labels
        ).item()
        for k in (1, 2, 3, None)
    ]
    assert all(x <= y + 1e-12 for x, y in zip(by_k, by_k[1:]))


# --------------------------------------------------------------------------- logistic


def test_logistic_requires_sims():
    emb = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sims"):
        build_loss("logistic", {})(emb, emb)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", BATCH_KINDS)
@pytest.mark.parametrize("neg_per_pos", [1, 3])
def test_logistic_exact_when_negatives_of_a_row_tie(neg_per_pos, kind, dtype, device):
    # Give every negative of image i the same score b_i: then the loss no longer depends
    # on which negatives are drawn and equals
    #     sum_pos softplus(-p_ij) + neg_per_pos * sum_pos softplus(b_i).
    # Positives get scores far from every b_i, so drawing a positive as a "negative"
    # would show up in the value.
    img, txt, labels = make_batch(kind, 11, dtype, device)
    n_img, n_txt = img.shape[0], txt.shape[0]
    pos = torch.tensor(naive_positive(n_img, n_txt, labels), device=device)
    gen = torch.Generator().manual_seed(11)
    row_neg = -3.0 + 2.0 * torch.rand(n_img, 1, generator=gen, dtype=torch.float64)
    row_neg = row_neg.expand(n_img, n_txt)
    pos_val = 5.0 + torch.rand(n_img, n_txt, generator=gen, dtype=torch.float64)
    sims = torch.where(pos.cpu(), pos_val, row_neg).to(dtype=dtype, device=device)
    expected = 0.0
    for i in range(n_img):
        has_neg = not bool(pos[i].all())
        for j in range(n_txt):
            if pos[i, j]:
                expected += math.log1p(math.exp(-float(sims[i, j])))
                if has_neg:
                    expected += neg_per_pos * math.log1p(math.exp(float(row_neg[i, 0])))
    torch.manual_seed(123)
    value = build_loss("logistic", {"neg_per_pos": neg_per_pos})(img, txt, sims=sims, labels=labels)
    assert value.dtype == dtype
    assert value.item() == pytest.approx(expected, rel=1e-5)


def recover_draws(sims, pos, value):
    """Number of times each (image, text) cell was drawn as a negative, read off the
    gradient: d/dp softplus(p) = sigmoid(p) per draw, d/dp softplus(-p) = -sigmoid(-p)
    for the positive itself."""
    (g,) = torch.autograd.grad(value, [sims])
    counts = (g + pos * torch.sigmoid(-sims)) / torch.sigmoid(sims)
    return counts.detach()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", BATCH_KINDS)
@pytest.mark.parametrize("neg_per_pos", [1, 4])
def test_logistic_matches_naive_loop_over_its_draws(neg_per_pos, kind, dtype):
    # Method: a sampling loss cannot be compared with an independent sampler draw for
    # draw without copying its RNG calls. Instead, with a fixed torch.manual_seed, we
    # recover which negatives it drew from the gradient w.r.t. sims (each draw of cell
    # (i, j') adds sigmoid(p_ij') there), check that the draws are whole numbers, lie
    # only on negatives of the right image and number neg_per_pos per positive pair,
    # and then recompute Eq. 7 with a naive loop over positives and recovered draws.
    # Uniformity of the draws is tested separately below.
    img, txt, labels = make_batch(kind, 12, dtype, "cpu")
    n_img, n_txt = img.shape[0], txt.shape[0]
    pos = torch.tensor(naive_positive(n_img, n_txt, labels), dtype=dtype)
    gen = torch.Generator().manual_seed(12)
    sims = torch.randn(n_img, n_txt, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    loss = build_loss("logistic", {"neg_per_pos": neg_per_pos})
    torch.manual_seed(2024)
    value = loss(img, txt, sims=sims, labels=labels)
    counts = recover_draws(sims, pos, value)
    rounded = counts.round()
    torch.testing.assert_close(counts, rounded, rtol=0, atol=1e-3)
    assert (rounded >= 0).all()
    assert (rounded[pos.bool()] == 0).all()
    for i in range(n_img):
        n_pos_i = int(pos[i].sum())
        n_neg_i = n_txt - n_pos_i
        assert int(rounded[i].sum()) == (n_pos_i * neg_per_pos if n_neg_i else 0)
    naive = 0.0
    for i in range(n_img):
        for j in range(n_txt):
            p = float(sims[i, j].detach())
            if pos[i, j]:
                naive += math.log1p(math.exp(-p))
            naive += int(rounded[i, j]) * math.log1p(math.exp(p))
    assert value.item() == pytest.approx(naive, rel=1e-5)
    # Same seed, same draws; the loss keeps no state between calls.
    torch.manual_seed(2024)
    assert loss(img, txt, sims=sims, labels=labels).item() == value.item()


def test_logistic_draws_are_uniform_over_negatives():
    # labels=None, 4 pairs: each image has 3 negatives. 6000 draws per positive pair:
    # each negative is drawn ~Binomial(6000, 1/3), mean 2000, sd ~36.5. A fixed seed makes
    # the test deterministic; 6 sd (220) leaves room for any sound uniform sampler.
    sims = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    emb = torch.zeros(4, 2)
    torch.manual_seed(7)
    value = build_loss("logistic", {"neg_per_pos": 6000})(emb, emb, sims=sims)
    counts = recover_draws(sims, torch.eye(4, dtype=torch.float64), value)
    off_diag = counts[~torch.eye(4, dtype=torch.bool)]
    assert (counts.diagonal() == 0).all()
    assert torch.allclose(counts.sum(dim=1), torch.full((4,), 6000.0, dtype=torch.float64))
    assert ((off_diag - 2000.0).abs() < 220).all()


def test_logistic_without_negatives_uses_positives_only():
    sims = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    emb = torch.zeros(2, 2)
    labels = (torch.tensor([4, 4]), torch.tensor([4, 4]))  # every pair is positive
    value = build_loss("logistic", {"neg_per_pos": 3})(emb, emb, sims=sims, labels=labels)
    assert value.item() == pytest.approx(F.softplus(-sims).sum().item())
    (g,) = torch.autograd.grad(value, [sims])
    assert torch.isfinite(g).all()
    # A single pair has no negative either.
    for reduction in ("sum", "mean"):
        one = build_loss("logistic", {"reduction": reduction})(emb[:1], emb[:1], sims=sims[:1, :1])
        assert one.item() == pytest.approx(math.log1p(math.exp(-1.0)))


def test_logistic_is_stable_for_large_scores():
    sims = torch.tensor([[-1000.0, 1000.0], [1000.0, 1000.0]], requires_grad=True)
    emb = torch.zeros(2, 2)
    value = build_loss("logistic", {})(emb, emb, sims=sims)
    assert torch.isfinite(value) and value.item() == pytest.approx(3000.0)
    (g,) = torch.autograd.grad(value, [sims])
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- API


def test_registry_names_and_defaults():
    assert LOSSES.names() == [
        "bidirectional_ranking", "dcca", "hardest_negative", "logistic", "triplet_sum"
    ]
    # ``positives`` was added later: it enters the hashed form only when set
    assert build_loss("triplet_sum", {}).params.hashed() == {"reduction": "sum", "margin": 0.2}
    assert build_loss("hardest_negative", {}).params.hashed() == {
        "reduction": "sum", "margin": 0.2
    }
    assert build_loss("hardest_negative", {}).params.positives == "image"
    assert build_loss("bidirectional_ranking", {}).params.model_dump() == {
        "reduction": "sum", "margin": 0.1, "lambda1": 1.0, "lambda2": 2.0,
        "lambda3": 0.0, "lambda4": 0.0, "top_k": 50,
    }
    assert build_loss("logistic", {}).params.model_dump() == {"reduction": "sum", "neg_per_pos": 1}
    for name in LOSSES:
        loss = build_loss(name, {})
        assert isinstance(loss, RetrievalLoss) and isinstance(loss, LOSSES[name])
        assert list(loss.parameters()) == [] and list(loss.buffers()) == []


@pytest.mark.parametrize(
    "name,params",
    [
        ("triplet_sum", {"margine": 0.2}),
        ("triplet_sum", {"margin": "0.2"}),
        ("triplet_sum", {"margin": -0.1}),
        ("hardest_negative", {"reduction": "avg"}),
        ("bidirectional_ranking", {"top_k": 0}),
        ("bidirectional_ranking", {"top_k": 2.5}),
        ("bidirectional_ranking", {"lambda2": -1.0}),
        ("bidirectional_ranking", {"margin": -0.1}),
        ("bidirectional_ranking", {"lambda1": 0.0, "lambda2": 0.0}),
        ("logistic", {"neg_per_pos": 0}),
        ("logistic", {"neg_per_pos": "1"}),
        ("logistic", {"margin": 0.2}),
    ],
)
def test_build_loss_rejects_bad_params(name, params):
    with pytest.raises(ValidationError):
        build_loss(name, params)


def test_build_loss_unknown_name_lists_known_names():
    with pytest.raises(RegistryError, match="triplet_sum"):
        build_loss("tripletsum", {})


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="twice"):
        LOSSES.register("triplet_sum", TripletSumLoss)
    fresh = Registry("loss", {"a": TripletSumLoss})
    with pytest.raises(ValueError, match="twice"):
        fresh.register("a", HardestNegativeLoss)
    assert len(LOSSES) == 5


def test_loss_rejects_params_of_another_loss():
    with pytest.raises(TypeError):
        TripletSumLoss(LogisticLoss.Params())
    assert isinstance(BidirectionalRankingLoss(BidirectionalRankingLoss.Params()), RetrievalLoss)


def test_input_checks():
    emb = torch.zeros(3, 4)
    loss = build_loss("triplet_sum", {})
    with pytest.raises(ValueError, match="B_img == B_txt"):
        loss(emb, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="embedding size"):
        loss(emb, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="shape"):
        loss(emb, emb, sims=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="integer"):
        loss(emb, emb, labels=(torch.zeros(3), torch.zeros(3)))
    with pytest.raises(ValueError, match="shape"):
        loss(emb, emb, labels=(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="2-D"):
        build_loss("bidirectional_ranking", {})(torch.zeros(3), torch.zeros(3))


def test_positive_mask():
    assert torch.equal(positive_mask(None, 3, 3), torch.eye(3, dtype=torch.bool))
    mask = positive_mask((torch.tensor([4, 2]), torch.tensor([2, 4, 4, 9])), 2, 4)
    assert mask.tolist() == [[False, True, True, False], [True, False, False, False]]


def test_logistic_pair_scores_route_equals_full_matrix():
    """Scoring only the sampled pairs gives the same value and draws as the full matrix."""
    from xmrbench.core.losses.logistic import LogisticLoss

    gen = torch.Generator().manual_seed(5)
    img = torch.randn(6, 4, generator=gen)
    txt = torch.randn(14, 4, generator=gen)
    labels = (torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 0]))
    loss = LogisticLoss(LogisticLoss.Params(neg_per_pos=3))
    with torch.random.fork_rng():
        torch.manual_seed(11)
        full = loss(img, txt, sims=img @ txt.T, labels=labels)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        pairs = loss(img, txt, labels=labels, pair_scores=lambda i, j: (img[i] * txt[j]).sum(-1))
    assert torch.allclose(full, pairs)
