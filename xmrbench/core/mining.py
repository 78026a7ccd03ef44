"""Hard-negative mining kernels: from a block of similarities to candidate lists.

Offline mining (AOQ) ranks, for every training image, the captions of *other*
images by a trained model's similarity, and for every caption the other images;
the top ``k`` of each list are the candidates a later training round samples its
negatives from. The kernels here work on one block of the similarity matrix at a
time, so that a whole training set (29,000 images x 145,000 captions on Flickr30K)
never needs its full matrix in memory.

- :func:`hardest_captions`, :func:`hardest_images`: one block of image rows / caption
  columns at a time (two passes over the matrix for both lists);
- :func:`mine_candidates`: both lists from ONE pass over blocks of image rows; the
  caption lists are the rows' top-k, the image lists running top-k over the blocks seen.
  Its peak memory is :func:`mining_memory_bound` (about 1.3 GiB for 150,000 captions x
  30,000 images at the authors' release widths, 2,000 and 400).

Ties are broken by index (the lower index first), so the lists do not depend on
the order in which a top-k implementation visits equal scores, nor on the blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _topk_by_index(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of each row, ties broken by the lower index.

    A stable descending sort ranks equal scores by their position.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def hardest_captions(sims: Tensor, image_ids: Tensor, caption_image: Tensor, k: int) -> Tensor:
    """For each image row of ``sims (B_img, N_txt)``: the ``k`` most similar captions of
    other images, most similar first -> ``(B_img, k)`` caption indices.

    ``image_ids (B_img,)`` are the rows' image indices; ``caption_image (N_txt,)`` the
    image of every caption. ``k`` must not exceed the captions of other images.
    """
    own = caption_image[None, :].to(image_ids.device) == image_ids[:, None]
    masked = sims.masked_fill(own.to(sims.device), float("-inf"))
    _check_k(k, int((~own).sum(1).min()) if len(own) else k, "captions of other images")
    return _topk_by_index(masked, k)


def hardest_images(sims: Tensor, caption_ids: Tensor, caption_image: Tensor, k: int) -> Tensor:
    """For each caption column of ``sims (N_img, B_txt)``: the ``k`` most similar images
    other than its own, most similar first -> ``(B_txt, k)`` image indices.

    ``caption_ids (B_txt,)`` are the columns' caption indices.
    """
    own_image = caption_image[caption_ids]
    n_img = sims.shape[0]
    own = torch.arange(n_img, device=sims.device)[None, :] == own_image.to(sims.device)[:, None]
    masked = sims.t().masked_fill(own, float("-inf"))
    _check_k(k, n_img - 1, "other images")
    return _topk_by_index(masked, k)


def _check_k(k: int, available: int, what: str) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > available:
        raise ValueError(f"k={k} exceeds the {available} {what}")


# ---------------------------------------------------------------------------------
# Streaming: both candidate lists from one pass over blocks of image rows
# ---------------------------------------------------------------------------------

#: Image rows per block of :func:`mine_candidates` by default. With the release widths
#: (2,000 captions per image, 400 images per caption) on 150,000 captions x 30,000
#: images, :func:`mining_memory_bound` is about 1.3 GiB (within 2 GB) at this size.
MINING_BLOCK_IMAGES = 256

#: Bytes of temporaries one chunk of rows or columns may take; the kernel sizes its
#: chunks to stay within it (one row or column at least, whatever it takes).
CHUNK_BYTES = 4 * 1024**2

_EMPTY = torch.iinfo(torch.int64).min  # an empty slot (or an excluded pair): below every key
_LOW = 2**31 - 1  # low half of a key: _LOW - index, so that the lower index has the larger key
_BYTES_PER_CANDIDATE = 64  # per candidate of a row's top-k: values, indices, keys, their sort
_BYTES_PER_ENTRY = 96  # per similarity entering the running lists: indices, slots, score, key
_TOPK_SCRATCH = 16  # torch's CPU top-k copies a row as (value, int64 index) pairs, per thread
_ALLOCATOR_CACHE = 4 * 32 * 1024**2  # freed memory glibc may keep (see mining_memory_bound)


def order_keys(scores: Tensor, index: Tensor) -> Tensor:
    """One int64 key per score whose descending order is (score desc, index asc).

    ``scores`` (any float dtype; compared as float32, -0.0 equal to 0.0) and ``index``
    (int64, below 2**31) broadcast to a common shape; the keys are distinct wherever
    the indices are. High 32 bits: the float32 bits mapped to an order-preserving
    int32; low 32 bits: ``2**31 - 1 - index``.
    """
    bits = (scores.to(torch.float32) + 0.0).view(torch.int32)  # a copy; + 0.0 turns -0.0 into +0.0
    flip = bits >> 31
    flip &= 0x7FFFFFFF
    bits ^= flip  # negative floats: reverse their order
    del flip
    keys = bits.to(torch.int64)
    del bits
    keys *= 2**32
    keys += _LOW
    keys -= index
    return keys


def key_scores(keys: Tensor) -> Tensor:
    """The float32 scores of :func:`order_keys`' keys (same shape)."""
    ordered = torch.div(keys, 2**32, rounding_mode="floor").to(torch.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)


def key_index(keys: Tensor) -> Tensor:
    """The indices of :func:`order_keys`' keys (int64, same shape)."""
    return _LOW - (keys & 0xFFFFFFFF)


def _row_bytes(n_captions: int, k_texts: int, extra: int, dtype_bytes: int) -> int:
    """Temporaries of one image row of the caption lists: a float32 copy (if the block is
    not float32) and its top ``k_texts + extra + 1`` candidates."""
    width = min(k_texts + extra + 1, n_captions)
    return (4 * n_captions if dtype_bytes != 4 else 0) + _BYTES_PER_CANDIDATE * width


def _column_bytes(k_images: int, block_images: int) -> int:
    """Temporaries of one caption's running list while it is reduced: its slots, their top-k."""
    return 8 * (k_images + block_images) + 40 * k_images


def mining_memory_bound(n_captions: int, k_texts: int, k_images: int, block_images: int = MINING_BLOCK_IMAGES,
                        dtype_bytes: int = 4, *, n_images: int = 0, captions_per_image: int = 5,
                        threads: int | None = None) -> int:
    """Peak memory in bytes :func:`mine_candidates` needs (its tensors and the allocator's
    cache), beyond the embeddings and whatever ``row_block`` keeps; with ``n_images`` the
    ``(n_images, k_texts)`` int32 caption lists it returns are included (``n_images=0``
    leaves them out).

    Derivation (``N`` captions, ``b`` = ``block_images``, ``B`` = ``dtype_bytes`` of a
    block, ``k_t`` / ``k_i`` the widths, ``T`` torch threads, ``C`` = ``CHUNK_BYTES``):

    - result, caption lists: ``4 n_images k_t`` (int32, filled block by block);
    - running image lists: ``8 N (k_i + b)``: per caption, ``k_i + b`` int64 keys
      (score and image index in one key), the ``k_i`` best so far plus room for one
      block's entries; they are reduced to the best ``k_i`` when the next block would not
      fit. Plus ``20 N`` for the per-caption fill counts (int64), thresholds (float32) and
      the caption -> image map (int64);
    - during a block: the block ``B b N`` and ``32 N`` for per-caption vectors;
    - at the end, instead (the block is gone): the image lists' int32 result ``4 N k_i``;
    - chunks: the kernel works on chunks of image rows (caption lists) and of captions
      (insertion into the running lists, reductions) whose temporaries stay within ``C``,
      or within one row / one caption when that alone is larger: ``max(C, row, caption)``
      with ``row = 4 N [B != 4] + 64 (k_t + cpi + 1)`` (a row's float32 copy if the block
      is not float32, its top candidates: values, indices, keys and their sort) and
      ``caption = 2 (8 (k_i + b) + 40 k_i + (B + 1 + 96) b)`` (its slots and their top-k;
      its scores, mask and entries); plus torch's top-k scratch ``16 N T`` (each thread
      copies a row as value and int64 index pairs) and ``16 N`` to complete a row whose
      ``k_t``-th score is tied (a mask and the positions of the tied scores);
    - the C allocator's cache, ``A + 16 N T`` with ``A = 128 MiB``: glibc raises its
      mmap threshold to the largest block freed, up to 32 MiB (a chunk's temporaries, a
      per-caption vector, or the block itself when it is that small), then serves such
      sizes from its heap and keeps up to twice the threshold at the heap's top before
      returning memory; ``A`` allows as much again for fragments. Each worker thread's
      heap may keep its freed top-k scratch. Not tensors, but resident memory of the
      process, which is what ``xmrbench bench mining`` measures.

    Hence ``bound = 4 n_images k_t + 8 N (k_i + b) + 20 N + max(B b N + 32 N, 4 N k_i)
    + max(C, row, caption) + 16 N (2 T + 1) + A``. It grows with the block and the
    widths, never with ``N_img x N_txt``.
    """
    n, b = n_captions, block_images
    threads = torch.get_num_threads() if threads is None else threads
    row = _row_bytes(n, k_texts, captions_per_image, dtype_bytes)
    caption = 2 * (_column_bytes(k_images, b) + (dtype_bytes + 1 + _BYTES_PER_ENTRY) * b)
    chunk = max(CHUNK_BYTES, row, caption) + _TOPK_SCRATCH * n * (threads + 1)
    cache = _ALLOCATOR_CACHE + _TOPK_SCRATCH * n * threads
    during = dtype_bytes * b * n + 32 * n
    return (4 * n_images * k_texts + 8 * n * (k_images + b) + 20 * n + max(during, 4 * n * k_images) + chunk
            + cache)


class _RunningImages:
    """Per caption, the best ``k`` images of the blocks seen so far (as :func:`order_keys`),
    in ``k + block`` slots: entries that beat the caption's threshold are appended, and a
    caption's slots are reduced to the best ``k`` when the next block would overflow them.

    The threshold is the ``k``-th best score at the last reduction: a later entry with a
    score at or below it ranks below ``k`` earlier images (equal scores: the lower index
    first), so it can never be among the best ``k``.
    """

    def __init__(self, n_captions: int, k: int, block: int, device: torch.device):
        self.k, self.width = k, k + block
        self.keys = torch.full((n_captions, self.width), _EMPTY, dtype=torch.int64, device=device)
        self.fill = torch.zeros(n_captions, dtype=torch.int64, device=device)
        self.threshold = torch.full((n_captions,), float("-inf"), dtype=torch.float32, device=device)
        self.columns = max(1, CHUNK_BYTES // 2 // _column_bytes(k, block))  # captions per reduction

    def add(self, block: Tensor, start: int, own_rows: Tensor, own_cols: Tensor) -> None:
        """Append the entries of ``block (b, N_txt)`` (image rows ``start``..) that beat their
        caption's threshold, except the pairs (``own_rows``, ``own_cols``).

        Works on chunks of captions: a transposed copy of the chunk ``(c, b)`` and its mask
        of passing entries take at most half of ``CHUNK_BYTES``, the reductions and the
        passing entries of a group of its captions the other half.
        """
        b, n_txt = block.shape
        step = max(1, CHUNK_BYTES // 2 // (b * (block.element_size() + 1)))
        max_entries = max(b, CHUNK_BYTES // 2 // _BYTES_PER_ENTRY)
        for c0 in range(0, n_txt, step):
            c1 = min(c0 + step, n_txt)
            scores = block[:, c0:c1].T.contiguous()  # (c, b): a caption's entries side by side
            passed = scores > self.threshold[c0:c1, None]
            own = (own_cols >= c0) & (own_cols < c1)
            passed[own_cols[own] - c0, own_rows[own]] = False
            counts = passed.sum(1, dtype=torch.int32)
            over = torch.nonzero(self.fill[c0:c1] + counts > self.width).squeeze(1) + c0
            for lo in range(0, len(over), self.columns):
                self._reduce(over[lo : lo + self.columns])
            ends = counts.cumsum(0)
            lo = 0
            while lo < c1 - c0:  # groups of captions whose entries fit the chunk budget
                before = int(ends[lo - 1]) if lo else 0
                hi = max(lo + 1, int(torch.searchsorted(ends, before + max_entries, right=True)))
                if int(ends[hi - 1]) > before:
                    self._insert(scores[lo:hi], passed[lo:hi], counts[lo:hi], c0 + lo, start)
                lo = hi
            self.fill[c0:c1] += counts

    def _insert(self, scores: Tensor, passed: Tensor, counts: Tensor, first: int, start: int) -> None:
        """Append the passing entries of captions ``first``.. (``scores``, ``passed`` ``(c, b)``)."""
        b = passed.shape[1]
        flat = torch.nonzero(passed.view(-1)).squeeze(1)  # grouped by caption, rows ascending
        caps = torch.div(flat, b, rounding_mode="floor")
        rows = flat - caps * b
        rows += start
        keys = order_keys(scores.view(-1)[flat], rows)
        del flat, rows
        # slot of the caption's first entry, less the entries of the captions before it in ``flat``
        base = torch.arange(first, first + len(counts), device=counts.device) * self.width
        base += self.fill[first : first + len(counts)]
        base -= counts.cumsum(0) - counts
        dest = base[caps]
        dest += torch.arange(len(caps), device=caps.device)
        self.keys.view(-1).index_copy_(0, dest, keys)

    def _reduce(self, cols: Tensor) -> None:
        """Keep the best ``k`` of the captions ``cols``; their threshold becomes the ``k``-th score."""
        best = self.keys[cols].topk(self.k, dim=1, sorted=False).values
        self.threshold[cols] = key_scores(best.min(1).values)
        rows = torch.full((len(cols), self.width), _EMPTY, dtype=torch.int64, device=best.device)
        rows[:, : self.k] = best
        del best
        self.keys.index_copy_(0, cols, rows)
        self.fill[cols] = self.k

    def result(self) -> Tensor:
        """``(N_txt, k)`` int32 image indices, most similar first."""
        n_txt = self.keys.shape[0]
        out = torch.empty((n_txt, self.k), dtype=torch.int32, device=self.keys.device)
        for lo in range(0, n_txt, self.columns):
            best = self.keys[lo : lo + self.columns].topk(self.k, dim=1, sorted=True).values
            if (best == _EMPTY).any():  # only non-finite scores stay out of every list
                raise ValueError("similarities must be finite")
            out[lo : lo + self.columns] = key_index(best).to(torch.int32)
        return out


def _caption_rows(block: Tensor, start: int, caption_image: Tensor, own_rows: Tensor, own_cols: Tensor,
                  k: int, extra: int, out: Tensor) -> None:
    """Rows ``start``.. of the caption lists from ``block (b, N_txt)``, into ``out``.

    Each row's top ``k + extra + 1`` (``extra``: the most captions of one image) holds, after
    its own captions are dropped, at least ``k + 1`` others; they are ordered by
    (score desc, index asc). Equal scores left out by the top-k can only matter when the
    ``k``-th kept score equals the smallest one the top-k returned: those rows are
    completed from the whole row, by index.
    """
    b, n_txt = block.shape
    width = min(k + extra + 1, n_txt)
    step = max(1, CHUNK_BYTES // _row_bytes(n_txt, k, extra, block.element_size()))
    for lo in range(0, b, step):
        x = block[lo : lo + step]
        if x.dtype != torch.float32:
            x = x.float()
        vals, idx = torch.topk(x, width, dim=1, sorted=False)
        if not torch.isfinite(vals).all():  # NaN and +inf rank first, so a row holding one shows it here
            raise ValueError("similarities must be finite")
        images = torch.arange(start + lo, start + lo + len(x), device=x.device)
        keys = order_keys(vals, idx).masked_fill_(caption_image[idx] == images[:, None], _EMPTY)
        order = keys.argsort(dim=1, descending=True)[:, :k]
        chosen, scores = idx.gather(1, order), vals.gather(1, order)
        if width < n_txt:
            kth = scores[:, -1]
            for t in torch.nonzero(kth == vals.min(1).values).squeeze(1).tolist():
                above = int((scores[t] > kth[t]).sum())
                equal = x[t] == kth[t]
                equal[own_cols[own_rows == lo + t]] = False
                chosen[t, above:] = torch.nonzero(equal).squeeze(1)[: k - above]
        out[start + lo : start + lo + len(x)] = chosen.to(torch.int32)


def mine_candidates(
    row_block: Callable[[slice], Tensor],
    *,
    n_images: int,
    caption_image: Tensor,
    k_texts: int,
    k_images: int,
    block_images: int = MINING_BLOCK_IMAGES,
) -> tuple[Tensor, Tensor]:
    """Both candidate lists of offline mining from one pass over blocks of image rows.

    ``row_block(slice(a, b)) -> (b - a, N_txt)``: the similarities of images ``a..b-1`` to
    every caption (finite; ranked as float32; the kernel does not modify it).
    ``caption_image (N_txt,)``: the image of every caption, in ``0..n_images-1``.

    Returns ``i2t (n_images, k_texts)``: per image the most similar captions of other
    images, and ``t2i (N_txt, k_images)``: per caption the most similar images other than
    its own; int32, most similar first, equal scores by the lower index (also across
    blocks), on the blocks' device. The caption lists are the rows' top-k; the image lists
    are kept as running top-k over the blocks seen (see :class:`_RunningImages`). Peak
    memory: :func:`mining_memory_bound`. Raises ValueError when a ``k`` exceeds the
    negatives available or a block has the wrong shape or non-finite scores.
    """
    caption_image = torch.as_tensor(caption_image).long()
    if caption_image.ndim != 1:
        raise ValueError(f"caption_image must be 1-D, got shape {tuple(caption_image.shape)}")
    n_txt = len(caption_image)
    if block_images < 1:
        raise ValueError(f"block_images must be at least 1, got {block_images}")
    if n_images < 1 or n_txt < 1:
        raise ValueError(f"nothing to mine: {n_images} images, {n_txt} captions")
    if int(caption_image.min()) < 0 or int(caption_image.max()) >= n_images:
        raise ValueError(f"caption_image must hold image indices in 0..{n_images - 1}")
    own_count = torch.bincount(caption_image.cpu(), minlength=n_images)
    _check_k(k_texts, n_txt - int(own_count.max()), "captions of other images")
    _check_k(k_images, n_images - 1, "other images")
    extra = int(own_count.max())
    i2t: Tensor | None = None
    running: _RunningImages | None = None
    for start in range(0, n_images, block_images):
        stop = min(start + block_images, n_images)
        block = row_block(slice(start, stop))
        if tuple(block.shape) != (stop - start, n_txt):
            raise ValueError(f"row_block({start}:{stop}) returned shape {tuple(block.shape)}, "
                             f"expected {(stop - start, n_txt)}")
        if i2t is None or running is None:
            caption_image = caption_image.to(block.device)
            i2t = torch.empty((n_images, k_texts), dtype=torch.int32, device=block.device)
            running = _RunningImages(n_txt, k_images, block_images, block.device)
        own_cols = torch.nonzero((caption_image >= start) & (caption_image < stop)).squeeze(1)
        own_rows = caption_image[own_cols] - start
        _caption_rows(block, start, caption_image, own_rows, own_cols, k_texts, extra, i2t)
        running.add(block, start, own_rows, own_cols)
        del block
    assert i2t is not None and running is not None
    return i2t, running.result()
