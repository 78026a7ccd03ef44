"""Stacked cross attention (SCAN; Lee et al., "Stacked Cross Attention for Image-Text
Matching", ECCV 2018): the image-caption similarity, a reference and a fast kernel.

Inputs (rows are queries of the retrieval, i.e. images):

- ``img_emb (N_img, R, D)``: region features of each image (L2-normalised by the model);
- ``word_emb (N_txt, L, D)`` with ``lengths (N_txt,)``: word features of each caption,
  valid on the first ``lengths[t]`` steps. Whatever lies after them (zeros, or anything
  else) is padding: a padded word never receives attention and never counts in a
  pooling, whatever its value.

The score of one image (regions ``v_1..v_R``) and one caption (words ``e_1..e_n``),
following SCAN Sec. 3.1-3.2 and the released code's ``clipped_l2norm`` (docs/peers.md#scan):

1. raw scores ``s_ij = v_i . e_j`` between every region ``i`` and word ``j``;
2. "clipped_l2norm": ``s = LeakyReLU_0.1(s)``, then L2-normalised *over the query
   positions* (over words ``j`` for text-to-image, over regions ``i`` for
   image-to-text);
3. attention over the *context positions* with temperature ``lambda_softmax`` (Eq. 2):
   text-to-image (t2i): each word attends to the regions,
   ``alpha_ij = softmax_i(lambda_softmax * s_ij)``, ``a_j = sum_i alpha_ij v_i``;
   image-to-text (i2t): each region attends to the words,
   ``alpha_ij = softmax_j(lambda_softmax * s_ij)``, ``a_i = sum_j alpha_ij e_j``;
4. relevance of each query fragment to its attended vector by cosine (Eq. 3):
   ``R(e_j, a_j)`` (t2i) or ``R(v_i, a_i)`` (i2t);
5. pooling over the query fragments (Eq. 4-5): "avg", the mean, or "lse",
   ``log(sum exp(lambda_lse * R)) / lambda_lse``.

Two implementations, tested against each other on random inputs:

- :func:`scan_pair_reference` / :func:`scan_sims_reference`: one image and one caption at
  a time, the caption sliced to its valid words, the attended vectors built explicitly
  (the specification; slow);
- :func:`scan_sims` (every image x every caption) and :func:`scan_pair_scores`
  (aligned pairs): blocked over images x captions and batched. Two identities make
  them cheap: the numerator of the cosine is ``q . a = sum_c alpha_c (q . x_c)``, a
  weighted sum of the raw scores already at hand, and the norm of the attended vector
  is ``|a|^2 = alpha^T G alpha`` with ``G`` the ``(R, R)`` Gram matrix of the image's
  regions (t2i) or the ``(L, L)`` Gram matrix of the caption's words (i2t); the
  ``(..., D)`` attended vectors are never formed.

Memory bound of the fast kernel. Captions are sorted by length and cut into blocks of
``b_t`` captions padded to the block's own longest caption ``L_b``; images into blocks
of ``b_i``. One block holds ``E = b_i * b_t * R * L_b`` region-word scores and, without
autograd, at most

    working_set_bytes = s * (k * E + 4 * b_i * b_t * (R + L_b)
                             + 2 * b_t * L_b * D + b_t * L_b * (L_b + 3) + b_i * b_t)

bytes (``s`` = bytes per element, ``k`` = score-sized tensors alive at once: 3 for
SCAN, 6 for BFAN). :func:`plan_blocks` picks ``b_i`` and each ``b_t`` so that this
stays within ``budget_bytes`` (on the CPU within ``min(budget_bytes, CPU_BLOCK_BYTES)``:
cache-sized blocks are faster; without autograd, up to one block per torch thread, as
many as ``budget_bytes`` holds, are computed at once, :func:`run_blocks`). Beyond the
inputs, one call then needs at most

    budget_bytes + s * (N_img * N_txt + N_img * R * (R + 1))

(the output and the regions' Gram matrices), plus the BLAS library's own workspace.
With autograd (training) every block's intermediates are kept for the backward pass,
so the bound holds for evaluation only; in training, captions are bucketed by length
in blocks of at most ``GRAD_BLOCK_CAPTIONS`` to save padded work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn import functional as F

Direction = Literal["t2i", "i2t"]
Pooling = Literal["avg", "lse"]

LEAKY_SLOPE = 0.1  # "clipped" part of clipped_l2norm (the released SCAN code)
EPS = 1e-8  # the peers' epsilon in l2norm and cosine
SCAN_TENSORS = 3  # score-sized tensors alive at once in a SCAN block (scores, attention, one temporary)
GRAD_BLOCK_CAPTIONS = 32  # with autograd, captions per block: length buckets that waste little padding
#: On the CPU, blocks are sized to this many bytes (if the budget allows): each of the
#: dozen passes over a block then runs from cache. Measured on 200 x 1000 pairs, d = 64
#: to 1024: 1.5 to 2.5 times faster than blocks of hundreds of MB.
CPU_BLOCK_BYTES = 8 * 2**20


# ---------------------------------------------------------------------------
# pieces shared by the reference and the fast kernel


def clipped_l2norm(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """LeakyReLU (slope 0.1) of raw scores, then L2 normalisation along ``dim`` (the
    query positions); an all-zero vector stays zero."""
    clipped = F.leaky_relu(scores, LEAKY_SLOPE)
    return clipped / clipped.norm(dim=dim, keepdim=True).clamp_min(EPS)


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of matching rows: ``a (n, D)``, ``b (n, D)`` -> ``(n,)``; the peers'
    ``w12 / max(|a| |b|, eps)``."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)


def check_inputs(img_emb: torch.Tensor, word_emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Validate shapes; return ``lengths`` as int64 on ``word_emb``'s device."""
    if img_emb.dim() != 3 or word_emb.dim() != 3:
        raise ValueError(
            f"expected img_emb (N_img, R, D) and word_emb (N_txt, L, D); got {tuple(img_emb.shape)} "
            f"and {tuple(word_emb.shape)}"
        )
    if img_emb.shape[-1] != word_emb.shape[-1]:
        raise ValueError(f"region and word features differ in size: {img_emb.shape[-1]} vs {word_emb.shape[-1]}")
    lengths = torch.as_tensor(lengths).to(device=word_emb.device, dtype=torch.long)
    if lengths.shape != (word_emb.shape[0],):
        raise ValueError(f"lengths must have shape ({word_emb.shape[0]},); got {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > word_emb.shape[1]):
        raise ValueError(f"caption lengths must lie in [1, {word_emb.shape[1]}]")
    return lengths


def pool_reference(rel: torch.Tensor, pooling: Pooling, lambda_lse: float) -> torch.Tensor:
    """Pool the relevances ``(n,)`` of a pair's query fragments into one score (SCAN Eq. 4-5)."""
    if pooling == "avg":
        return rel.mean()
    if pooling == "lse":
        return torch.log(torch.exp(lambda_lse * rel).sum()) / lambda_lse
    raise ValueError(f"unknown pooling {pooling!r}; known: avg, lse")


# ---------------------------------------------------------------------------
# reference: one image, one caption


def attention_reference(query: torch.Tensor, context: torch.Tensor, *, lambda_softmax: float) -> torch.Tensor:
    """Attention weights of each query fragment over the context fragments.

    ``query (n_q, D)``, ``context (n_c, D)`` -> ``alpha (n_q, n_c)``, rows summing to 1:
    raw scores ``context @ query.T``, clipped_l2norm over the query positions, softmax
    over the context positions with temperature ``lambda_softmax``.
    """
    raw = context @ query.T  # (n_c, n_q)
    normed = clipped_l2norm(raw, dim=1)
    return torch.softmax(lambda_softmax * normed.T, dim=1)


def scan_pair_reference(
    regions: torch.Tensor,
    words: torch.Tensor,
    *,
    direction: Direction,
    lambda_softmax: float,
    pooling: Pooling,
    lambda_lse: float,
) -> torch.Tensor:
    """SCAN score of one image ``regions (R, D)`` and one caption's valid ``words (n, D)`` -> 0-d."""
    if direction == "t2i":
        query, context = words, regions
    elif direction == "i2t":
        query, context = regions, words
    else:
        raise ValueError(f"unknown direction {direction!r}; known: t2i, i2t")
    alpha = attention_reference(query, context, lambda_softmax=lambda_softmax)
    attended = alpha @ context  # (n_q, D): the attended sentence/image vector of each query fragment
    return pool_reference(row_cosine(query, attended), pooling, lambda_lse)


def sims_reference(
    pair_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """``sims (N_img, N_txt)`` by calling ``pair_fn(regions, valid_words)`` on every pair."""
    lengths = check_inputs(img_emb, word_emb, lengths)
    rows = []
    for i in range(img_emb.shape[0]):
        row = [pair_fn(img_emb[i], word_emb[t, : int(lengths[t])]) for t in range(word_emb.shape[0])]
        rows.append(torch.stack(row) if row else img_emb.new_zeros(0))
    return torch.stack(rows) if rows else img_emb.new_zeros(0, word_emb.shape[0])


def scan_sims_reference(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    direction: Direction = "t2i",
    lambda_softmax: float = 9.0,
    pooling: Pooling = "lse",
    lambda_lse: float = 6.0,
) -> torch.Tensor:
    """The specification of :func:`scan_sims`: a loop over every (image, caption) pair.

    ``img_emb (N_img, R, D)``, ``word_emb (N_txt, L, D)``, ``lengths (N_txt,)`` ->
    ``sims (N_img, N_txt)``.
    """
    kw = dict(direction=direction, lambda_softmax=lambda_softmax, pooling=pooling, lambda_lse=lambda_lse)
    return sims_reference(lambda r, w: scan_pair_reference(r, w, **kw), img_emb, word_emb, lengths)


# ---------------------------------------------------------------------------
# block planning


def working_set_bytes(
    block_images: int,
    block_captions: int,
    *,
    n_regions: int,
    length: int,
    dim: int,
    tensors: int,
    elem_bytes: int = 4,
) -> int:
    """Bytes one block of ``block_images x block_captions`` pairs holds at its peak (no autograd).

    ``tensors`` score-sized ``(b_i, b_t, R, L)`` tensors, the per-fragment vectors
    (numerators, norms, cosines; ``4 b_i b_t (R + L)``), the caption block's words and
    their masked copy (``2 b_t L D``), their Gram matrices, norms and mask
    (``b_t L (L + 3)``) and the block's scores (``b_i b_t``).
    """
    b_i, b_t, r, length_ = block_images, block_captions, n_regions, length
    elems = (
        tensors * b_i * b_t * r * length_
        + 4 * b_i * b_t * (r + length_)
        + 2 * b_t * length_ * dim
        + b_t * length_ * (length_ + 3)
        + b_i * b_t
    )
    return elems * elem_bytes


@dataclass(frozen=True)
class BlockPlan:
    """How :func:`blocked_sims` cuts a similarity matrix.

    ``order (N_txt,)``: captions sorted by length; ``block_images``: images per block;
    ``caption_blocks``: ``(start, stop, length)`` ranges of ``order``, each padded to
    its own longest caption ``length``.
    """

    order: torch.Tensor
    block_images: int
    caption_blocks: tuple[tuple[int, int, int], ...]


def plan_blocks(
    lengths: torch.Tensor,
    *,
    n_images: int,
    n_regions: int,
    dim: int,
    budget_bytes: int,
    tensors: int,
    elem_bytes: int = 4,
    max_block_captions: int | None = None,
) -> BlockPlan:
    """Block sizes that keep :func:`working_set_bytes` of every block within ``budget_bytes``.

    Images are cut into equal blocks sized for the longest caption (about the square
    root of the pairs that fit, more when there are few captions); captions, sorted by
    length, are cut greedily into the largest blocks that fit at their own padded length
    (and hold at most ``max_block_captions``). Raises ``ValueError`` if one image and one
    caption do not fit.
    """
    lengths = torch.as_tensor(lengths).cpu().long()
    n_txt = int(lengths.numel())
    order = torch.argsort(lengths, stable=True)
    if n_images == 0 or n_txt == 0:
        return BlockPlan(order, max(1, n_images), ())
    sorted_len = lengths[order].tolist()
    longest = sorted_len[-1]

    def fits(b_i: int, b_t: int, length: int) -> bool:
        size = working_set_bytes(b_i, b_t, n_regions=n_regions, length=length, dim=dim, tensors=tensors, elem_bytes=elem_bytes)
        return size <= budget_bytes

    if not fits(1, 1, longest):
        need = working_set_bytes(1, 1, n_regions=n_regions, length=longest, dim=dim, tensors=tensors, elem_bytes=elem_bytes)
        raise ValueError(f"a memory budget of {budget_bytes} bytes cannot hold one image x one caption ({need} bytes)")
    # the largest number of pairs that fit at the longest length
    lo, hi = 1, n_images * n_txt
    while lo < hi:
        mid = (lo + hi + 1) // 2
        b_i = min(n_images, max(1, math.isqrt(mid)))
        if fits(b_i, -(-mid // b_i), longest):
            lo = mid
        else:
            hi = mid - 1
    pairs = lo
    b_i = min(n_images, max(math.isqrt(pairs), pairs // n_txt, 1))
    while b_i > 1 and not fits(b_i, 1, longest):
        b_i //= 2
    blocks = []
    start = 0
    while start < n_txt:
        lo, hi = 1, min(n_txt - start, max_block_captions or n_txt)  # the most that fit at their own length
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(b_i, mid, sorted_len[start + mid - 1]):
                lo = mid
            else:
                hi = mid - 1
        blocks.append((start, start + lo, sorted_len[start + lo - 1]))
        start += lo
    return BlockPlan(order, b_i, tuple(blocks))


# ---------------------------------------------------------------------------
# the fast kernel


@dataclass
class CaptionBlock:
    """One block of captions, ready for a block function.

    ``words (b_t, L, D)`` with padded steps set to zero, ``lengths (b_t,)``,
    ``valid (b_t, L)`` bool, ``norms (b_t, L)`` (0 on padding) and ``gram (b_t, L, L)``,
    the Gram matrix of each caption's words.
    """

    words: torch.Tensor
    lengths: torch.Tensor
    valid: torch.Tensor
    norms: torch.Tensor
    gram: torch.Tensor


@dataclass
class ImageBlock:
    """One block of images: ``regions (b_i, R, D)``, ``norms (b_i, R)``, ``gram (b_i, R, R)``."""

    regions: torch.Tensor
    norms: torch.Tensor
    gram: torch.Tensor


BlockFn = Callable[[ImageBlock, CaptionBlock, bool], torch.Tensor]


def in_place_allowed(*tensors: torch.Tensor) -> bool:
    """Intermediates may be overwritten unless autograd records the computation."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def caption_block(word_emb: torch.Tensor, lengths: torch.Tensor, *, inplace: bool) -> CaptionBlock:
    """Zero the padded steps of ``word_emb (b_t, L, D)`` and precompute norms and Gram matrices."""
    steps = torch.arange(word_emb.shape[1], device=word_emb.device)
    valid = steps[None, :] < lengths[:, None]
    words = word_emb.masked_fill_(~valid[..., None], 0.0) if inplace else word_emb.masked_fill(~valid[..., None], 0.0)
    return CaptionBlock(words, lengths, valid, words.norm(dim=-1), words @ words.transpose(1, 2))


def image_block(img_emb: torch.Tensor) -> ImageBlock:
    return ImageBlock(img_emb, img_emb.norm(dim=-1), img_emb @ img_emb.transpose(1, 2))


def blocked_sims(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    block_fn: BlockFn,
    budget_bytes: int,
    tensors: int,
) -> torch.Tensor:
    """Every image x every caption, computed block by block with ``block_fn``.

    ``img_emb (N_img, R, D)``, ``word_emb (N_txt, L, D)``, ``lengths (N_txt,)`` ->
    ``sims (N_img, N_txt)``; ``block_fn(images, captions, inplace)`` returns the
    ``(b_i, b_t)`` scores of one block. Blocks hold at most ``budget_bytes`` (on the
    CPU at most :data:`CPU_BLOCK_BYTES`, for speed, and without autograd each of the
    torch threads computes whole rows of blocks, :func:`run_blocks`); see the module
    docstring for the memory bound.
    """
    lengths = check_inputs(img_emb, word_emb, lengths)
    n_img, n_regions, dim = img_emb.shape
    n_txt = word_emb.shape[0]
    out = img_emb.new_empty(n_img, n_txt)
    inplace = in_place_allowed(img_emb, word_emb)
    on_cpu = img_emb.device.type == "cpu"
    block_bytes = min(budget_bytes, CPU_BLOCK_BYTES) if on_cpu else budget_bytes
    workers = block_workers(budget_bytes, block_bytes) if inplace and on_cpu else 1
    # With autograd every block's intermediates are kept anyway: the budget bounds
    # nothing, and short length buckets save the padded work instead.
    plan = plan_blocks(
        lengths, n_images=n_img, n_regions=n_regions, dim=dim, budget_bytes=block_bytes,
        tensors=tensors, elem_bytes=img_emb.element_size(),
        max_block_captions=None if inplace else GRAD_BLOCK_CAPTIONS,
    )
    order = plan.order.to(word_emb.device)
    images = [image_block(img_emb[s : s + plan.block_images]) for s in range(0, n_img, plan.block_images)]

    def caption_row(block: tuple[int, int, int]) -> None:
        start, stop, length = block
        index = order[start:stop]
        captions = caption_block(word_emb[index, :length], lengths[index], inplace=inplace)
        row = 0
        for image in images:
            scores = block_fn(image, captions, inplace)
            out[row : row + scores.shape[0], index] = scores
            row += scores.shape[0]

    run_blocks(caption_row, plan.caption_blocks, workers)
    return out


def block_workers(budget_bytes: int, block_bytes: int, threads: int | None = None) -> int:
    """Threads of CPU blocks for :func:`run_blocks`: one per torch thread (``threads``, by
    default this process's), as many as ``budget_bytes`` holds blocks of ``block_bytes``.
    The blocks themselves, hence the bits, do not depend on it."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, min(threads, budget_bytes // max(1, block_bytes)))


def run_blocks(fn: Callable[[Any], None], blocks: Sequence[Any], workers: int) -> None:
    """``fn(block)`` for every block; with ``workers > 1``, in that many threads, each
    running torch single-threaded.

    A block's dozen elementwise passes are too small for torch's own threads to share
    well (each pass is one short parallel region: on 2 cores, 1.6x the one-thread speed
    for BFAN, 1.7x for SCAN at the bench's quick size); whole blocks on separate threads
    ran 1.9x. torch releases the GIL inside each operation, and every block is computed
    by one thread from start to end, so the result is the one-thread result bit for bit,
    whatever the number of workers. The process-wide torch thread count is set to one
    for the duration and restored after, so the caller must not run other torch work in
    parallel meanwhile (evaluation does not).
    """
    if workers <= 1 or len(blocks) <= 1:
        for block in blocks:
            fn(block)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(blocks)), thread_name_prefix="xmr-block") as pool:
            for done in [pool.submit(fn, block) for block in blocks]:
                done.result()
    finally:
        torch.set_num_threads(threads)


def softmax_(x: torch.Tensor, dim: int, *, inplace: bool) -> torch.Tensor:
    """Softmax along ``dim``, overwriting ``x`` when allowed (entries at -inf get 0)."""
    if not inplace:
        return torch.softmax(x, dim=dim)
    x.sub_(x.amax(dim=dim, keepdim=True)).exp_()
    return x.div_(x.sum(dim=dim, keepdim=True))


def scaled_clipped_l2norm(scores: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """``scale * clipped_l2norm(scores, dim)`` as a new tensor (``scores`` is kept).

    Divided first and scaled after, as the reference does: a one-element query set
    then gives exactly +-scale, and the exact ties this creates in the attention
    survive (BFAN's focal step depends on them).
    """
    if scores.requires_grad and torch.is_grad_enabled():
        clipped = F.leaky_relu(scores, LEAKY_SLOPE)
        return clipped / clipped.norm(dim=dim, keepdim=True).clamp_min(EPS) * scale
    # max(x, 0.1 x) is LeakyReLU_0.1 bit for bit, and two passes that vectorise beat one that does not
    clipped = torch.mul(scores, LEAKY_SLOPE)
    torch.maximum(scores, clipped, out=clipped)
    return clipped.div_(clipped.norm(dim=dim, keepdim=True).clamp_min(EPS)).mul_(scale)


def attended_cosine(
    scores: torch.Tensor,
    alpha: torch.Tensor,
    gram: torch.Tensor,
    query_norms: torch.Tensor,
    *,
    inplace: bool,
) -> torch.Tensor:
    """Cosine between each query fragment and its attended vector, without forming it.

    Layout ``(A, C, B, Q)``: ``A`` batch items owning the context, ``C`` context
    positions, ``B`` batch items owning the queries, ``Q`` query positions.
    ``scores`` are the raw query-context scores, ``alpha`` the attention (summing to 1
    over ``C``), ``gram (A, C, C)`` the context Gram matrices and ``query_norms``
    broadcastable to ``(A, B, Q)``. Returns ``(A, B, Q)``:
    ``sum_c alpha_c s_c / max(|q| sqrt(alpha^T G alpha), eps)``.
    ``scores`` is overwritten when ``inplace``.
    """
    a, c, b, q = alpha.shape
    numer = (scores.mul_(alpha) if inplace else scores * alpha).sum(1)
    g_alpha = torch.bmm(gram, alpha.reshape(a, c, b * q)).view(a, c, b, q)
    sq_norm = (g_alpha.mul_(alpha) if inplace else g_alpha * alpha).sum(1)
    del g_alpha
    attended_norm = sq_norm.clamp_min(EPS * EPS).sqrt()
    return numer / (attended_norm * query_norms).clamp_min(EPS)


def pool(rel: torch.Tensor, valid: torch.Tensor | None, pooling: Pooling, lambda_lse: float) -> torch.Tensor:
    """Pool ``rel (..., Q)`` over its last axis, counting only ``valid`` positions (None: all)."""
    if pooling == "avg":
        if valid is None:
            return rel.mean(-1)
        return (rel * valid).sum(-1) / valid.sum(-1)
    if pooling == "lse":
        logits = lambda_lse * rel
        if valid is not None:
            logits = logits.masked_fill(~valid, -math.inf)
        return torch.logsumexp(logits, dim=-1) / lambda_lse
    raise ValueError(f"unknown pooling {pooling!r}; known: avg, lse")


def t2i_relevance(
    scores: torch.Tensor,
    images: ImageBlock,
    word_norms: torch.Tensor,
    *,
    lambda_softmax: float,
    inplace: bool,
    reassign: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Text-to-image relevance of every word to its attended image vector.

    ``scores (A, R, B, L)`` raw region-word scores (padded words scoring 0) ->
    ``(A, B, L)``; ``word_norms`` broadcastable to ``(A, B, L)``. ``reassign`` rewrites
    the attention (BFAN's focal attention) before it is applied. ``scores`` is consumed
    when ``inplace``.
    """
    alpha = softmax_(scaled_clipped_l2norm(scores, -1, lambda_softmax), 1, inplace=inplace)
    if reassign is not None:
        alpha = reassign(alpha)
    return attended_cosine(scores, alpha, images.gram, word_norms, inplace=inplace)


def i2t_relevance(
    scores: torch.Tensor,
    captions: CaptionBlock,
    region_norms: torch.Tensor,
    valid: torch.Tensor,
    *,
    lambda_softmax: float,
    inplace: bool,
    reassign: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Image-to-text relevance of every region to its attended sentence vector.

    ``scores (B, L, A, R)`` raw word-region scores, ``valid`` broadcastable to
    ``(B, L, 1, 1)`` (padded words get no attention) -> ``(B, A, R)``;
    ``region_norms`` broadcastable to ``(B, A, R)``. ``scores`` is consumed when ``inplace``.
    """
    logits = scaled_clipped_l2norm(scores, -1, lambda_softmax)
    if inplace:  # x + 0 is x and x + -inf is -inf: the masked fill, as one broadcast add (cheaper on a CPU)
        logits = logits.add_(torch.zeros(valid.shape, dtype=logits.dtype, device=logits.device)
                             .masked_fill_(~valid, -math.inf))
    else:
        logits = logits.masked_fill(~valid, -math.inf)
    alpha = softmax_(logits, 1, inplace=inplace)
    if reassign is not None:
        alpha = reassign(alpha)
    return attended_cosine(scores, alpha, captions.gram, region_norms, inplace=inplace)


def t2i_scores(images: ImageBlock, captions: CaptionBlock) -> torch.Tensor:
    """Raw scores of a block in the text-to-image layout ``(b_i, R, b_t, L)``: one GEMM."""
    b_i, r, d = images.regions.shape
    b_t, length, _ = captions.words.shape
    return (images.regions.reshape(b_i * r, d) @ captions.words.reshape(b_t * length, d).T).view(b_i, r, b_t, length)


def i2t_scores(images: ImageBlock, captions: CaptionBlock) -> torch.Tensor:
    """Raw scores of a block in the image-to-text layout ``(b_t, L, b_i, R)``: one GEMM."""
    b_i, r, d = images.regions.shape
    b_t, length, _ = captions.words.shape
    return (captions.words.reshape(b_t * length, d) @ images.regions.reshape(b_i * r, d).T).view(b_t, length, b_i, r)


def scan_block(
    images: ImageBlock,
    captions: CaptionBlock,
    inplace: bool,
    *,
    direction: Direction,
    lambda_softmax: float,
    pooling: Pooling,
    lambda_lse: float,
) -> torch.Tensor:
    """SCAN scores ``(b_i, b_t)`` of one block of images x captions."""
    if direction == "t2i":
        rel = t2i_relevance(
            t2i_scores(images, captions), images, captions.norms[None], lambda_softmax=lambda_softmax, inplace=inplace
        )
        return pool(rel, captions.valid[None], pooling, lambda_lse)
    if direction == "i2t":
        rel = i2t_relevance(
            i2t_scores(images, captions), captions, images.norms[None], captions.valid[:, :, None, None],
            lambda_softmax=lambda_softmax, inplace=inplace,
        )
        return pool(rel, None, pooling, lambda_lse).T
    raise ValueError(f"unknown direction {direction!r}; known: t2i, i2t")


def scan_sims(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    direction: Direction = "t2i",
    lambda_softmax: float = 9.0,
    pooling: Pooling = "lse",
    lambda_lse: float = 6.0,
    budget_bytes: int = 512 * 2**20,
) -> torch.Tensor:
    """SCAN similarity of every image x every caption, blocked within ``budget_bytes``.

    ``img_emb (N_img, R, D)``, ``word_emb (N_txt, L, D)``, ``lengths (N_txt,)`` ->
    ``sims (N_img, N_txt)``; equals :func:`scan_sims_reference`. Differentiable.
    """
    def block_fn(images: ImageBlock, captions: CaptionBlock, inplace: bool) -> torch.Tensor:
        return scan_block(
            images, captions, inplace,
            direction=direction, lambda_softmax=lambda_softmax, pooling=pooling, lambda_lse=lambda_lse,
        )

    return blocked_sims(img_emb, word_emb, lengths, block_fn=block_fn, budget_bytes=budget_bytes, tensors=SCAN_TENSORS)


def paired_relevance_inputs(
    img_emb: torch.Tensor, word_emb: torch.Tensor, lengths: torch.Tensor
) -> tuple[ImageBlock, CaptionBlock]:
    """Aligned pairs as one image block and one caption block (pair ``p`` = image ``p``, caption ``p``)."""
    lengths = check_inputs(img_emb, word_emb, lengths)
    if img_emb.shape[0] != word_emb.shape[0]:
        raise ValueError(f"aligned pairs need as many images as captions; got {img_emb.shape[0]} and {word_emb.shape[0]}")
    length = int(lengths.max()) if lengths.numel() else 0
    captions = caption_block(word_emb[:, :length], lengths, inplace=False)
    return image_block(img_emb), captions


def scan_pair_scores(
    img_emb: torch.Tensor,
    word_emb: torch.Tensor,
    lengths: torch.Tensor,
    *,
    direction: Direction = "t2i",
    lambda_softmax: float = 9.0,
    pooling: Pooling = "lse",
    lambda_lse: float = 6.0,
) -> torch.Tensor:
    """SCAN scores of aligned pairs: ``img_emb (P, R, D)``, ``word_emb (P, L, D)``,
    ``lengths (P,)`` -> ``(P,)``, the diagonal of :func:`scan_sims`."""
    images, captions = paired_relevance_inputs(img_emb, word_emb, lengths)
    n = img_emb.shape[0]
    if n == 0:
        return img_emb.new_zeros(0)
    if direction == "t2i":
        scores = torch.bmm(images.regions, captions.words.transpose(1, 2)).unsqueeze(2)  # (P, R, 1, L)
        rel = t2i_relevance(scores, images, captions.norms[:, None], lambda_softmax=lambda_softmax, inplace=False)
        return pool(rel, captions.valid[:, None], pooling, lambda_lse).squeeze(1)
    if direction == "i2t":
        scores = torch.bmm(captions.words, images.regions.transpose(1, 2)).unsqueeze(2)  # (P, L, 1, R)
        rel = i2t_relevance(
            scores, captions, images.norms[:, None], captions.valid[:, :, None, None],
            lambda_softmax=lambda_softmax, inplace=False,
        )
        return pool(rel, None, pooling, lambda_lse).squeeze(1)
    raise ValueError(f"unknown direction {direction!r}; known: t2i, i2t")
