"""ADAPT's adapted, fovea-pooled similarity (Wehrmann et al., "Adaptive Cross-Modal
Embeddings for Image-Text Alignment", AAAI 2020; docs/peers.md#adapt): a reference and
a fast kernel.

ADAPT adapts the per-position features of one modality with a scale and a shift
predicted from the other modality's global vector, pools them with a per-dimension
softmax (the "fovea") and compares the pooled vector with that global vector. Here the
model's projections are left to the caller; the kernel takes:

- ``values (N_v, n_max, D)`` with ``lengths (N_v,)``: the positions of each value item,
  valid on the first ``lengths[v]`` rows (``lengths=None``: every row is valid). Whatever
  lies after them is padding: a padded row never counts, whatever its value (NaN
  included). Text-to-image: the images' regions ``(N_img, R, D)``, no lengths;
  image-to-text: the captions' words ``(N_txt, L, D)`` with their lengths;
- ``gamma, beta, target (N_q, D)``: each query's scale, shift and target vector (the
  captions' for text-to-image, the images' for image-to-text);
- ``lam``: the fovea temperature, a float or a 0-d tensor (learnable), or ``None``
  (no fovea: average pooling).

The score of value ``v`` (valid rows ``X (n, D)``) and query ``q``:

1. adaptation: ``Xbar = X * gamma_q + beta_q`` (broadcast over the ``n`` rows);
2. fovea mask: ``M = softmax over the n rows of (lam * Xbar)``, each dimension ``d`` on
   its own;
3. pooling: ``pooled = (1/n) sum_rows M * Xbar`` (no fovea: ``(1/n) sum_rows Xbar``);
4. ``score = cos(pooled, target_q) = pooled . t / max(|pooled| |t|, 1e-8)``.

Two implementations, tested against each other on random inputs:

- :func:`fovea_sims_reference`: one value and one query at a time, the value cut to its
  valid rows, ``Xbar``, the mask and the pooled vector built explicitly (the
  specification; slow);
- :func:`fovea_sims` (every value x every query) and :func:`fovea_pair_scores` (aligned
  pairs): blocked and batched. Three identities make them cheap:

  * ``beta`` is constant over the rows of each dimension and a softmax ignores a
    constant shift, so ``M = softmax_rows(s * X)`` with ``s = lam * gamma``;
  * ``M`` sums to 1 over the rows, so ``sum_rows M * Xbar = gamma * w + beta`` with
    ``w_d = sum_r M_rd X_rd``, and the factor ``1/n`` leaves a cosine unchanged (it
    moves into the epsilon: ``max(|p| |t|, n * 1e-8)`` for ``p = gamma * w + beta``);
  * the largest logit of dimension ``d`` is ``s_d * max_r X_rd`` if ``s_d >= 0`` and
    ``s_d * min_r X_rd`` otherwise, i.e. ``max(s_d * hi_d, s_d * lo_d)`` with ``hi, lo``
    the per-value extrema over the valid rows: a stable softmax needs no reduction pass
    over the ``(b_v, b_q, n, D)`` exponentials. The shift is detached (the softmax does
    not depend on it). Padded rows are filled with the value's first row, so their
    logits stay ``<= 0``; their exponentials, equal to the first row's, are subtracted
    from the normaliser (which holds the first row's, so nothing cancels badly) and
    they are zeroed in the weighted sum.

  Without fovea, ``pooled = gamma * m + beta`` with ``m`` the mean of the valid rows,
  and the numerator and the squared norm are GEMMs:
  ``pooled . t = m . (gamma t) + beta . t`` and
  ``|pooled|^2 = m^2 . gamma^2 + 2 m . (gamma beta) + |beta|^2``; no ``(N_v, N_q, D)``
  tensor is formed (the expanded square loses relative precision when ``|pooled|`` is
  far below ``|gamma * m|`` and ``|beta|``).

Work: ``N_v * N_q * n * D`` exponentials (:func:`fovea_work`; ``n`` the valid rows, plus
the padding of a block's shorter values), one per (value, query, row, dimension). On a
CPU they set the floor; four more elementwise passes over each block (the logits, the
normaliser, the weighting and its sum) run from cache. ``xmrbench bench adapt`` reports the
ratio to that floor.

Memory bound of the fast kernel. Values are sorted by length and cut into blocks of
``b_v`` values padded to the block's own longest value ``n_b``; queries into blocks of
``b_q``. With fovea, one block holds ``E = b_v * b_q * n_b * D`` exponentials and,
without autograd, at most

    working_set_bytes = s * (k * E + 2 * b_v * b_q * D + 5 * b_v * b_q
                             + b_v * (2 * n_b * D + n_b + 2 * D + 3) + b_q * (D + 1))

bytes (``s`` = bytes per element, ``k = FOVEA_TENSORS`` exponential-sized tensors
alive at once, overwritten in place; two ``(b_v, b_q, D)`` intermediates, five
``(b_v, b_q)`` ones, the block's values gathered in length order with their filled
copy, their valid-row mask, extrema and counts, ``lam * gamma`` and the targets'
norms); without fovea ``s * (b_v * (2 * n_b * D + n_b + 4 * D + 2) + 2 * b_q * (D + 1)
+ 5 * b_v * b_q)``. :func:`plan_fovea_blocks` keeps this within ``budget_bytes`` (on
the CPU within ``min(budget_bytes, CPU_BLOCK_BYTES)``: cache-sized blocks are faster).
The large tensors of every block are carved from one buffer allocated once per call
(:class:`Arena`), so that the heap does not fragment. Without autograd on the CPU, up to
one row of blocks per torch thread, as many as ``budget_bytes`` holds, runs at once,
each single-threaded with an arena of its own (``run_blocks`` of
:mod:`~xmrbench.core.sim.cross_attention`: the one-thread result bit for bit). Beyond
the inputs, one call then needs at most

    budget_bytes + s * N_v * N_q

(the output and the block budget), plus ``16 N_v`` bytes of indices, the BLAS
library's own workspace and the allocator's rounding. With autograd (training) every block's intermediates are kept
for the backward pass (about one exponential-sized tensor per block), so the bound
holds for evaluation only.
"""

from __future__ import annotations

import math
import queue
from dataclasses import dataclass

import torch

from xmrbench.core.sim.cross_attention import (
    CPU_BLOCK_BYTES,
    EPS,
    block_workers,
    in_place_allowed,
    run_blocks,
)

Lam = float | torch.Tensor | None

FOVEA_TENSORS = 1  # exponential-sized tensors alive at once in an evaluation block (logits -> exps -> weighted, in place)
DEFAULT_BUDGET = 512 * 2**20


# ---------------------------------------------------------------------------
# inputs


def check_fovea_inputs(
    values: torch.Tensor,
    lengths: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    target: torch.Tensor,
    lam: Lam,
) -> torch.Tensor | None:
    """Validate shapes; return ``lengths`` as int64 on ``values``' device (``None`` stays ``None``)."""
    if values.dim() != 3:
        raise ValueError(f"expected values (N_v, n_max, D); got {tuple(values.shape)}")
    for name, tensor in (("gamma", gamma), ("beta", beta), ("target", target)):
        if tensor.dim() != 2 or tensor.shape != gamma.shape:
            raise ValueError(
                f"expected gamma, beta and target of one shape (N_q, D); got {name} {tuple(tensor.shape)} "
                f"with gamma {tuple(gamma.shape)}"
            )
    if gamma.shape[1] != values.shape[2]:
        raise ValueError(f"value and query features differ in size: {values.shape[2]} vs {gamma.shape[1]}")
    if isinstance(lam, torch.Tensor) and lam.numel() != 1:
        raise ValueError(f"lam must be a number, a one-element tensor or None; got shape {tuple(lam.shape)}")
    n_v, n_max = values.shape[:2]
    if lengths is None:
        if n_v and n_max < 1:
            raise ValueError("values need at least one row")
        return None
    lengths = torch.as_tensor(lengths).to(device=values.device, dtype=torch.long)
    if lengths.shape != (n_v,):
        raise ValueError(f"lengths must have shape ({n_v},); got {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > n_max):
        raise ValueError(f"value lengths must lie in [1, {n_max}]")
    return lengths


def fovea_work(n_values: int, n_queries: int, n_rows: int, dim: int) -> int:
    """Exponentials of a fovea similarity: one per (value, query, row, dimension).

    For ragged values pass ``n_values=1`` and ``n_rows`` = the sum of their lengths.
    """
    return n_values * n_queries * n_rows * dim


# ---------------------------------------------------------------------------
# reference: one value, one query


def fovea_mask(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """The fovea mask of one value: ``x (n, D)``, ``gamma, beta (D,)`` -> ``M (n, D)``,
    ``softmax`` over the ``n`` rows of ``lam * (x * gamma + beta)``, each column summing to 1."""
    return torch.softmax(lam * (x * gamma + beta), dim=0)


def fovea_pair_reference(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, target: torch.Tensor, lam: Lam
) -> torch.Tensor:
    """Score of one value's valid rows ``x (n, D)`` and one query ``gamma, beta, target (D,)`` -> 0-d."""
    adapted = x * gamma + beta
    if lam is None:
        pooled = adapted.mean(0)
    else:
        pooled = (fovea_mask(x, gamma, beta, lam) * adapted).sum(0) / x.shape[0]
    return (pooled * target).sum() / (pooled.norm() * target.norm()).clamp_min(EPS)


def fovea_sims_reference(
    values: torch.Tensor,
    lengths: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    target: torch.Tensor,
    lam: Lam,
) -> torch.Tensor:
    """The specification of :func:`fovea_sims`: a loop over every (value, query) pair.

    ``values (N_v, n_max, D)``, ``lengths (N_v,)`` or None, ``gamma, beta, target (N_q, D)``
    -> ``sims (N_v, N_q)``.
    """
    lengths = check_fovea_inputs(values, lengths, gamma, beta, target, lam)
    n_v, n_max = values.shape[:2]
    rows = []
    for v in range(n_v):
        x = values[v, : n_max if lengths is None else int(lengths[v])]
        row = [fovea_pair_reference(x, gamma[q], beta[q], target[q], lam) for q in range(gamma.shape[0])]
        rows.append(torch.stack(row) if row else values.new_zeros(0))
    return torch.stack(rows) if rows else values.new_zeros(0, gamma.shape[0])


# ---------------------------------------------------------------------------
# block planning


def fovea_working_set_bytes(
    block_values: int,
    block_queries: int,
    *,
    length: int,
    dim: int,
    fovea: bool,
    elem_bytes: int = 4,
) -> int:
    """Bytes one block of ``block_values x block_queries`` pairs holds at its peak (no autograd).

    With fovea: ``FOVEA_TENSORS`` exponential-sized ``(b_v, b_q, n_b, D)`` tensors, two
    ``(b_v, b_q, D)`` ones (the shift, then the weighted sum; the normaliser, then a
    product), five ``(b_v, b_q)`` ones (numerators, norms, two temporaries, scores), the
    block's gathered values and their filled copy (``2 b_v n_b D``), their mask
    (``b_v n_b``), extrema and counts (``b_v (2 D + 3)``), ``lam * gamma`` and the
    targets' norms (``b_q (D + 1)``). Without fovea: the values, their copy, mask,
    extrema, means and squared means (``b_v (2 n_b D + n_b + 4 D + 2)``), two products
    of the queries and their sums (``2 b_q (D + 1)``) and five ``(b_v, b_q)`` GEMM
    outputs and temporaries.
    """
    b_v, b_q, n, d = block_values, block_queries, length, dim
    if fovea:
        elems = (
            FOVEA_TENSORS * b_v * b_q * n * d + 2 * b_v * b_q * d + 5 * b_v * b_q
            + b_v * (2 * n * d + n + 2 * d + 3) + b_q * (d + 1)
        )
    else:
        elems = b_v * (2 * n * d + n + 4 * d + 2) + 2 * b_q * (d + 1) + 5 * b_v * b_q
    return elems * elem_bytes


@dataclass(frozen=True)
class FoveaPlan:
    """How :func:`fovea_sims` cuts a similarity matrix.

    ``order (N_v,)``: values sorted by length; ``block_queries``: queries per block;
    ``value_blocks``: ``(start, stop, length)`` ranges of ``order``, each padded to its
    own longest value ``length``.
    """

    order: torch.Tensor
    block_queries: int
    value_blocks: tuple[tuple[int, int, int], ...]


def plan_fovea_blocks(
    lengths: torch.Tensor,
    *,
    n_queries: int,
    dim: int,
    budget_bytes: int,
    fovea: bool,
    elem_bytes: int = 4,
) -> FoveaPlan:
    """Block sizes that keep :func:`fovea_working_set_bytes` of every block within ``budget_bytes``.

    Queries are cut into equal blocks sized for the longest value (about the square root
    of the pairs that fit, more when there are few values); values, sorted by length,
    are cut greedily into the largest blocks that fit at their own padded length.
    Raises ``ValueError`` if one value and one query do not fit.
    """
    lengths = torch.as_tensor(lengths).cpu().long()
    n_v = int(lengths.numel())
    order = torch.argsort(lengths, stable=True)
    if n_queries == 0 or n_v == 0:
        return FoveaPlan(order, max(1, n_queries), ())
    sorted_len = lengths[order].tolist()
    longest = sorted_len[-1]

    def size(b_v: int, b_q: int, length: int) -> int:
        return fovea_working_set_bytes(b_v, b_q, length=length, dim=dim, fovea=fovea, elem_bytes=elem_bytes)

    if size(1, 1, longest) > budget_bytes:
        raise ValueError(
            f"a memory budget of {budget_bytes} bytes cannot hold one value x one query ({size(1, 1, longest)} bytes)"
        )
    lo, hi = 1, n_v * n_queries  # the largest number of pairs that fit at the longest length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        b_q = min(n_queries, max(1, math.isqrt(mid)))
        if size(-(-mid // b_q), b_q, longest) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    b_q = min(n_queries, max(math.isqrt(lo), lo // n_v, 1))
    while b_q > 1 and size(1, b_q, longest) > budget_bytes:
        b_q //= 2
    blocks = []
    start = 0
    while start < n_v:
        lo, hi = 1, n_v - start  # the most that fit at their own length
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size(mid, b_q, sorted_len[start + mid - 1]) <= budget_bytes:
                lo = mid
            else:
                hi = mid - 1
        blocks.append((start, start + lo, sorted_len[start + lo - 1]))
        start += lo
    return FoveaPlan(order, b_q, tuple(blocks))


# ---------------------------------------------------------------------------
# the fast kernel


class Arena:
    """A flat buffer, allocated once, carved front to back into a block's tensors.

    Without autograd, the blocks of one call reuse it: allocating their large tensors
    block after block would fragment the heap, whose resident size would then exceed
    what is live.
    """

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer = buffer
        self.used = 0

    def take(self, *shape: int) -> torch.Tensor:
        """The next ``math.prod(shape)`` elements, viewed as ``shape``."""
        size = math.prod(shape)
        if self.used + size > self.buffer.numel():
            raise ValueError(f"arena of {self.buffer.numel()} elements exhausted ({self.used} used, {size} asked)")
        out = self.buffer[self.used : self.used + size].view(shape)
        self.used += size
        return out


@dataclass
class ValueBlock:
    """One block of values, ready for the fovea.

    ``filled (A, n, D)``: padded rows replaced by the value's first row; ``zeroed (A, n, D)``:
    padded rows set to 0; ``hi, lo (A, D)``: per-dimension extrema over the valid rows
    (detached); ``counts (A,)``: valid rows; ``padded (A,)``: padded rows, or None when
    there are none.
    """

    filled: torch.Tensor
    zeroed: torch.Tensor
    hi: torch.Tensor
    lo: torch.Tensor
    counts: torch.Tensor
    padded: torch.Tensor | None


def value_block(values: torch.Tensor, lengths: torch.Tensor | None, *, arena: Arena | None = None) -> ValueBlock:
    """Prepare ``values (A, n, D)`` valid on their first ``lengths (A,)`` rows (None: all).

    With an ``arena`` (no autograd), ``values`` must be a copy the caller owns: it becomes
    the zeroed copy (overwritten in place) and the filled one is carved from the arena.
    """
    a, n, d = values.shape
    if lengths is None or bool((lengths == n).all()):
        detached = values.detach()
        counts = values.new_full((a,), float(n))
        return ValueBlock(values, values, detached.amax(1), detached.amin(1), counts, None)
    valid = (torch.arange(n, device=values.device)[None, :] < lengths[:, None])[..., None]  # (A, n, 1)
    if arena is None:
        filled = torch.where(valid, values, values[:, :1])
        zeroed = torch.where(valid, values, 0.0)
    else:
        filled = torch.where(valid, values, values[:, :1], out=arena.take(a, n, d))
        zeroed = values.masked_fill_(~valid, 0.0)
    detached = filled.detach()
    counts = lengths.to(values.dtype)
    # the filled rows repeat a valid one, so the extrema over all rows are those over the valid rows
    return ValueBlock(filled, zeroed, detached.amax(1), detached.amin(1), counts, n - counts)


def lam_tensor(lam: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """``lam`` as a 0-d tensor of ``like``'s dtype and device (a float stays a float)."""
    if isinstance(lam, torch.Tensor):
        return lam.reshape(()).to(dtype=like.dtype, device=like.device)
    return float(lam)


def fovea_scores(
    values: ValueBlock,
    scale: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    target: torch.Tensor,
    target_norms: torch.Tensor,
    *,
    arena: Arena | None = None,
) -> torch.Tensor:
    """Fovea scores of a block, without forming ``Xbar``.

    Values broadcast as ``(A, 1, n, D)``; queries as ``scale = lam * gamma``, ``gamma``,
    ``beta``, ``target`` of shape ``(1, B, D)`` and ``target_norms (1, B)`` (every value
    x every query) or ``(A, 1, D)`` and ``(A, 1)`` (aligned pairs) -> ``(A, B)``.
    The pooled vector is ``n * pooled = gamma * w + beta`` with
    ``w_d = sum_r softmax_r(scale_d X_rd) X_rd`` over the valid rows, and the epsilon of
    the cosine is scaled by ``n`` to match. With an ``arena`` (no autograd) the
    ``(A, B, n, D)`` exponentials and the two ``(A, B, D)`` intermediates are carved from
    it and overwritten in place; without, nothing is overwritten.
    """
    a, b = values.hi.shape[0], scale.shape[1]
    n, d = values.filled.shape[1:]
    filled, zeroed = values.filled[:, None], values.zeroed[:, None]
    hi, lo = values.hi[:, None], values.lo[:, None]
    floor = (values.counts * EPS)[:, None]
    if arena is None:
        shift = -torch.maximum(scale * hi, scale * lo).detach()  # minus the largest logit of each dimension
        exps = torch.addcmul(shift[:, :, None], scale[:, :, None], filled).exp()  # (A, B, n, D)
        norm = exps.sum(2)
        if values.padded is not None:  # the padded rows' exponentials repeat the first row's
            norm = norm.addcmul(values.padded[:, None, None], exps[:, :, 0], value=-1)
        pooled = (exps * zeroed).sum(2) / norm * gamma + beta
        numer = (pooled * target).sum(-1)
    else:
        first, second = arena.take(a, b, d), arena.take(a, b, d)
        shift = torch.mul(scale, hi, out=first)
        torch.maximum(shift, torch.mul(scale, lo, out=second), out=shift).neg_()
        exps = torch.addcmul(shift[:, :, None], scale[:, :, None], filled, out=arena.take(a, b, n, d)).exp_()
        norm = torch.sum(exps, 2, out=second)
        if values.padded is not None:
            norm.addcmul_(values.padded[:, None, None], exps[:, :, 0], value=-1)
        pooled = torch.sum(exps.mul_(zeroed), 2, out=first).div_(norm).mul_(gamma).add_(beta)
        numer = torch.mul(pooled, target, out=second).sum(-1)
    return numer / (torch.linalg.vector_norm(pooled, dim=-1) * target_norms).clamp_min(floor)


def mean_rows(values: ValueBlock) -> torch.Tensor:
    """Mean of each value's valid rows, ``(A, D)``."""
    return values.zeroed.sum(1) / values.counts[:, None]


def mean_scores(means: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scores without fovea from the values' mean rows ``means (A, D)`` and queries ``(B, D)``
    -> ``(A, B)``: ``pooled = gamma * m + beta``, its dot product with the target and its
    squared norm as GEMMs."""
    numer = torch.addmm((beta * target).sum(-1)[None], means, (gamma * target).T)
    sq = torch.addmm((beta * beta).sum(-1)[None], means * means, (gamma * gamma).T)
    sq = sq.addmm(means, (gamma * beta).T, alpha=2)
    t_norms = torch.linalg.vector_norm(target, dim=-1)
    return numer / (sq.clamp_min(0.0).sqrt() * t_norms[None]).clamp_min(EPS)


def arena_elements(plan: FoveaPlan, *, n_queries: int, dim: int, fovea: bool, ragged: bool) -> int:
    """Elements of the arena of :func:`fovea_sims`: the most any block carves (the value
    copies when ``ragged``, and with fovea the exponentials and two intermediates)."""
    b_q = min(plan.block_queries, n_queries)
    most = 0
    for start, stop, length in plan.value_blocks:
        b_v = stop - start
        size = 2 * b_v * length * dim if ragged else 0
        if fovea:
            size += b_v * b_q * length * dim + 2 * b_v * b_q * dim
        most = max(most, size)
    return most


def fovea_sims(
    values: torch.Tensor,
    lengths: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    target: torch.Tensor,
    lam: Lam,
    *,
    budget_bytes: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """Fovea similarity of every value x every query, blocked within ``budget_bytes``.

    ``values (N_v, n_max, D)``, ``lengths (N_v,)`` or None, ``gamma, beta, target (N_q, D)``
    -> ``sims (N_v, N_q)``; equals :func:`fovea_sims_reference`. Differentiable in the
    values, ``gamma``, ``beta``, ``target`` and a tensor ``lam``. Blocks hold at most
    ``budget_bytes`` (on the CPU at most :data:`CPU_BLOCK_BYTES`); see the module
    docstring for the memory bound.
    """
    lengths = check_fovea_inputs(values, lengths, gamma, beta, target, lam)
    n_v, n_max, dim = values.shape
    n_q = gamma.shape[0]
    out = values.new_empty(n_v, n_q)
    if n_v == 0 or n_q == 0:
        return out
    fovea = lam is not None
    lam_t = lam_tensor(lam, values) if fovea else None
    grads = [values, gamma, beta, target] + ([lam_t] if isinstance(lam_t, torch.Tensor) else [])
    on_cpu = values.device.type == "cpu"
    block_bytes = min(budget_bytes, CPU_BLOCK_BYTES) if on_cpu else budget_bytes
    plan_lengths = torch.full((n_v,), n_max, dtype=torch.long) if lengths is None else lengths
    plan = plan_fovea_blocks(
        plan_lengths, n_queries=n_q, dim=dim, budget_bytes=block_bytes, fovea=fovea, elem_bytes=values.element_size()
    )
    b_q = plan.block_queries
    order = plan.order.to(values.device)
    inplace = in_place_allowed(*grads)
    workers = block_workers(budget_bytes, block_bytes) if inplace and on_cpu else 1  # each with an arena of its own
    arenas: queue.SimpleQueue[Arena | None] = queue.SimpleQueue()
    size = arena_elements(plan, n_queries=n_q, dim=dim, fovea=fovea, ragged=lengths is not None) if inplace else 0
    for _ in range(min(workers, len(plan.value_blocks))):
        arenas.put(Arena(values.new_empty(size)) if size else None)

    def value_row(block_range: tuple[int, int, int]) -> None:
        start, stop, length = block_range
        arena = arenas.get()
        try:
            if arena is not None:
                arena.used = 0
            if lengths is None:
                rows: slice | torch.Tensor = slice(start, stop)
                block = value_block(values[start:stop], None)
            else:
                rows = order[start:stop]
                if arena is None:
                    gathered = values[:, :length].index_select(0, rows)
                else:
                    gathered = torch.index_select(values[:, :length], 0, rows, out=arena.take(stop - start, length, dim))
                block = value_block(gathered, lengths[rows], arena=arena)
            means = None if fovea else mean_rows(block)
            mark = 0 if arena is None else arena.used
            for q0 in range(0, n_q, b_q):
                g, b, t = gamma[q0 : q0 + b_q], beta[q0 : q0 + b_q], target[q0 : q0 + b_q]
                if means is not None:
                    scores = mean_scores(means, g, b, t)
                else:
                    if arena is not None:
                        arena.used = mark
                    t_norms = torch.linalg.vector_norm(t, dim=-1)
                    scores = fovea_scores(block, (lam_t * g)[None], g[None], b[None], t[None], t_norms[None], arena=arena)
                out[rows, q0 : q0 + b_q] = scores
        finally:
            arenas.put(arena)

    run_blocks(value_row, plan.value_blocks, workers)
    return out


def fovea_pair_scores(
    values: torch.Tensor,
    lengths: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    target: torch.Tensor,
    lam: Lam,
) -> torch.Tensor:
    """Fovea scores of aligned pairs: ``values (P, n_max, D)``, ``lengths (P,)`` or None,
    ``gamma, beta, target (P, D)`` -> ``(P,)``, the diagonal of :func:`fovea_sims`."""
    lengths = check_fovea_inputs(values, lengths, gamma, beta, target, lam)
    if values.shape[0] != gamma.shape[0]:
        raise ValueError(f"aligned pairs need as many values as queries; got {values.shape[0]} and {gamma.shape[0]}")
    if values.shape[0] == 0:
        return values.new_zeros(0)
    block = value_block(values if lengths is None else values[:, : int(lengths.max())], lengths)
    t_norms = torch.linalg.vector_norm(target, dim=-1)
    if lam is None:
        pooled = mean_rows(block) * gamma + beta
        return (pooled * target).sum(-1) / (torch.linalg.vector_norm(pooled, dim=-1) * t_norms).clamp_min(EPS)
    scale = lam_tensor(lam, values) * gamma
    return fovea_scores(block, scale[:, None], gamma[:, None], beta[:, None], target[:, None], t_norms[:, None]).squeeze(1)
