"""Bidirectional focal attention (BFAN; Liu et al., "Focus Your Attention: A
Bidirectional Focal Attention Network for Image-Text Matching", ACM MM 2019): the
image-caption similarity, a reference and a fast kernel.

The BFAN paper's text is not among ``papers/``; the equations below are our reading of
its Section 3 (pre-assigned attention, the indicator of relevant fragments, the
reassigned attention, the bidirectional score), matched against the public release's
behaviour recorded in docs/peers.md#bfan (lambda = 20, "equal" and "prob" variants, an ensemble
of the two). Inputs and raw-score normalisation are those of SCAN
(:mod:`xmrbench.core.sim.cross_attention`).

For a query fragment ``q`` (a word, or a region) and the context fragments ``x_1..x_n``
(the regions of the image, or the valid words of the caption):

1. pre-assigned attention, as SCAN's: ``alpha_i = softmax_i(lambda * s_i)`` with ``s``
   the clipped_l2norm-ed raw scores ``x_i . q`` (LeakyReLU 0.1, then L2 over the query
   positions);
2. focal scoring: each fragment's attention is compared with every other's,
   ``F(alpha_i) = sum_j (alpha_i - alpha_j) g(alpha_j)``, with the confidence
   ``g = 1`` ("equal": ``F > 0`` iff ``alpha_i`` exceeds the mean attention) or
   ``g(alpha_j) = sqrt(alpha_j)`` ("prob": compared with the mean weighted by each
   fragment's attention probability);
3. the indicator ``H(alpha_i) = 1 if F(alpha_i) > 0 else 0`` discards the irrelevant
   fragments and the attention is reassigned over the rest,
   ``alpha'_i = alpha_i H(alpha_i) / sum_j alpha_j H(alpha_j)``;
4. the attended vector ``a = sum_i alpha'_i x_i`` and the relevance ``cos(q, a)``;
5. text-to-image score: the mean relevance over the caption's words (attending to
   regions); image-to-text score: the mean over the image's regions (attending to
   words); the similarity is their sum.

``H`` is a step function: no gradient flows through it (as in the release). One
deviation: when every context fragment has the same attention (a one-word caption,
seen from a region), ``F = 0`` everywhere, the release divides 0 by 0 (NaN); here
nothing counts as irrelevant and all fragments are kept.

The fast kernel reuses SCAN's blocks and identities (the Gram-matrix norm of the
attended vector; see :mod:`xmrbench.core.sim.cross_attention`) and computes ``F`` in
linear time (:func:`focal_reassign`). Its memory bound is
SCAN's with ``k = BFAN_TENSORS`` score-sized tensors (both directions share one GEMM;
the second layout is a transposed copy).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from xmrbench.core.sim.cross_attention import (
    CaptionBlock,
    ImageBlock,
    attention_reference,
    blocked_sims,
    i2t_relevance,
    paired_relevance_inputs,
    pool,
    row_cosine,
    sims_reference,
    t2i_relevance,
    t2i_scores,
)

Focal = Literal["equal", "prob"]
BFAN_TENSORS = 6  # score-sized tensors alive at once in a BFAN block: both layouts, attention, two temporaries, a mask


# ---------------------------------------------------------------------------
# reference: one image, one caption


def focal_attention_reference(
    query: torch.Tensor, context: torch.Tensor, *, focal: Focal, lambda_softmax: float
) -> torch.Tensor:
    """Reassigned attention ``(n_q, n_c)`` of each query fragment over the context (steps 1-3),
    with ``F`` summed over every pair of context fragments as written."""
    alpha = attention_reference(query, context, lambda_softmax=lambda_softmax)  # (n_q, n_c)
    if focal == "equal":
        confidence = torch.ones_like(alpha)
    elif focal == "prob":
        confidence = alpha.sqrt()
    else:
        raise ValueError(f"unknown focal attention {focal!r}; known: equal, prob")
    # F(alpha_i) = sum_j (alpha_i - alpha_j) g(alpha_j), every (i, j) pair formed: (n_q, n_c, n_c)
    score = ((alpha[:, :, None] - alpha[:, None, :]) * confidence[:, None, :]).sum(-1)
    keep = score > 0
    keep = keep | ~keep.any(dim=1, keepdim=True)  # all equal: nothing is irrelevant
    kept = alpha * keep
    return kept / kept.sum(dim=1, keepdim=True)


def focal_relevance_reference(
    query: torch.Tensor, context: torch.Tensor, *, focal: Focal, lambda_softmax: float
) -> torch.Tensor:
    """Mean cosine between each query fragment and its focal-attended context vector (steps 1-5) -> 0-d."""
    alpha = focal_attention_reference(query, context, focal=focal, lambda_softmax=lambda_softmax)
    return row_cosine(query, alpha @ context).mean()


def bfan_pair_reference(
    regions: torch.Tensor, words: torch.Tensor, *, focal: Focal, lambda_softmax: float
) -> torch.Tensor:
    """BFAN score of one image ``regions (R, D)`` and one caption's valid ``words (n, D)`` -> 0-d."""
    kw = dict(focal=focal, lambda_softmax=lambda_softmax)
    text_to_image = focal_relevance_reference(words, regions, **kw)
    image_to_text = focal_relevance_reference(regions, words, **kw)
    return text_to_image + image_to_text


def bfan_sims_reference(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    focal: Focal = "equal",
    lambda_softmax: float = 20.0,
) -> torch.Tensor:
    """The specification of :func:`bfan_sims`: a loop over every (image, caption) pair.

    ``img_emb (N_img, R, D)``, ``word_emb (N_txt, L, D)``, ``lengths (N_txt,)`` ->
    ``sims (N_img, N_txt)``.
    """
    kw = dict(focal=focal, lambda_softmax=lambda_softmax)
    return sims_reference(lambda r, w: bfan_pair_reference(r, w, **kw), img_emb, word_emb, lengths)


# ---------------------------------------------------------------------------
# fast kernel


def focal_reassign(
    alpha: torch.Tensor,
    *,
    dim: int,
    count: int | torch.Tensor,
    focal: Focal,
    inplace: bool,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Steps 2-3 on attention ``alpha`` normalised along ``dim`` (padded positions at 0).

    ``count`` is the number of valid context positions (an int, or a tensor
    broadcastable against ``alpha``) and ``valid`` (bool, broadcastable; None: all
    valid) marks them. ``F`` in linear time: with ``d_i = alpha_i - max_j alpha_j`` and
    ``sum_j g_j > 0``, ``F_i > 0`` iff ``d_i > sum_j d_j g_j / sum_j g_j``. Centring on
    the maximum keeps exact ties exact: fragments tied for the largest attention (a
    one-word caption makes the normalised scores exactly +-1, hence ties) have
    ``d = 0`` and are kept whenever anything is below them, as the pairwise sum says;
    the uncentred form ``alpha_i sum g - sum alpha g`` loses them to rounding.
    Overwrites ``alpha`` when ``inplace``.
    """
    with torch.no_grad():  # H is a step function: no gradient through it
        centred = alpha - alpha.amax(dim=dim, keepdim=True)
        if valid is not None:
            centred.mul_(valid)  # padded positions to (-)0: they add nothing to the sums
        if focal == "equal":
            threshold = centred.sum(dim=dim, keepdim=True) / count
        elif focal == "prob":
            confidence = alpha.sqrt()  # 0 on padded positions
            total = confidence.sum(dim=dim, keepdim=True)
            threshold = confidence.mul_(centred).sum(dim=dim, keepdim=True) / total
            del confidence
        else:
            raise ValueError(f"unknown focal attention {focal!r}; known: equal, prob")
        # every attention equal (F = 0 everywhere): nothing is irrelevant, keep them all
        threshold.masked_fill_(threshold >= 0, -math.inf)
        # H as a float 0/1, the comparison written straight into the float tensor: one
        # pass, where a bool tensor costs several times an exp here (and sign(a - b)
        # clamped at 0, the same values, three passes)
        keep = torch.gt(centred, threshold, out=centred)
    if inplace:
        alpha.mul_(keep)
        return alpha.div_(alpha.sum(dim=dim, keepdim=True))
    kept = alpha * keep
    return kept / kept.sum(dim=dim, keepdim=True)


def bfan_block(
    images: ImageBlock, captions: CaptionBlock, inplace: bool, *, focal: Focal, lambda_softmax: float
) -> torch.Tensor:
    """BFAN scores ``(b_i, b_t)`` of one block of images x captions."""
    n_regions = images.regions.shape[1]
    scores = t2i_scores(images, captions)  # (b_i, R, b_t, L)
    # a copy, always: with unit dimensions the permuted view can already count as
    # contiguous, and .contiguous() would then alias what the t2i pass overwrites
    scores_i2t = scores.permute(2, 3, 0, 1).clone(memory_format=torch.contiguous_format)  # (b_t, L, b_i, R)
    rel = t2i_relevance(
        scores, images, captions.norms[None], lambda_softmax=lambda_softmax, inplace=inplace,
        reassign=lambda a: focal_reassign(a, dim=1, count=n_regions, focal=focal, inplace=inplace),
    )
    del scores
    text_to_image = pool(rel, captions.valid[None], "avg", 1.0)
    count = captions.lengths[:, None, None, None]
    rel = i2t_relevance(
        scores_i2t, captions, images.norms[None], captions.valid[:, :, None, None],
        lambda_softmax=lambda_softmax, inplace=inplace,
        reassign=lambda a: focal_reassign(
            a, dim=1, count=count, focal=focal, inplace=inplace, valid=captions.valid[:, :, None, None]
        ),
    )
    return text_to_image + pool(rel, None, "avg", 1.0).T


def bfan_sims(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    focal: Focal = "equal",
    lambda_softmax: float = 20.0,
    budget_bytes: int = 512 * 2**20,
) -> torch.Tensor:
    """BFAN similarity of every image x every caption, blocked within ``budget_bytes``.

    ``img_emb (N_img, R, D)``, ``word_emb (N_txt, L, D)``, ``lengths (N_txt,)`` ->
    ``sims (N_img, N_txt)``; equals :func:`bfan_sims_reference`. Differentiable.
    """
    def block_fn(images: ImageBlock, captions: CaptionBlock, inplace: bool) -> torch.Tensor:
        return bfan_block(images, captions, inplace, focal=focal, lambda_softmax=lambda_softmax)

    return blocked_sims(img_emb, word_emb, lengths, block_fn=block_fn, budget_bytes=budget_bytes, tensors=BFAN_TENSORS)


def bfan_pair_scores(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    focal: Focal = "equal",
    lambda_softmax: float = 20.0,
) -> torch.Tensor:
    """BFAN scores of aligned pairs: ``img_emb (P, R, D)``, ``word_emb (P, L, D)``,
    ``lengths (P,)`` -> ``(P,)``, the diagonal of :func:`bfan_sims`."""
    images, captions = paired_relevance_inputs(img_emb, word_emb, lengths)
    if img_emb.shape[0] == 0:
        return img_emb.new_zeros(0)
    n_regions = img_emb.shape[1]
    scores = torch.bmm(images.regions, captions.words.transpose(1, 2))  # (P, R, L)
    rel = t2i_relevance(
        scores.unsqueeze(2), images, captions.norms[:, None], lambda_softmax=lambda_softmax, inplace=False,
        reassign=lambda a: focal_reassign(a, dim=1, count=n_regions, focal=focal, inplace=False),
    )
    text_to_image = pool(rel, captions.valid[:, None], "avg", 1.0).squeeze(1)
    count = captions.lengths[:, None, None, None]
    rel = i2t_relevance(
        scores.transpose(1, 2).unsqueeze(2), captions, images.norms[:, None], captions.valid[:, :, None, None],
        lambda_softmax=lambda_softmax, inplace=False,
        reassign=lambda a: focal_reassign(
            a, dim=1, count=count, focal=focal, inplace=False, valid=captions.valid[:, :, None, None]
        ),
    )
    return text_to_image + pool(rel, None, "avg", 1.0).squeeze(1)
