"""Hard-negative mining kernels: from a block of similarities to candidate lists.

Offline mining (AOQ) ranks, for every training image, the captions of *other*
images by a trained model's similarity, and for every caption the other images;
the top ``k`` of each list are the candidates a later training round samples its
negatives from. The kernels here work on one block of the similarity matrix at a
time, so that a whole training set (29,000 images x 145,000 captions on Flickr30K)
never needs its full matrix in memory.

- :func:`hardest_captions`, :func:`hardest_images`: one block of image rows / caption
  columns at a time (two passes over the matrix for both lists);
- :func:`mine_candidates`: both lists from ONE pass over tiles of the matrix (a block of
  images against a chunk of captions), each list kept as a running top-k over the tiles
  seen. Its peak memory is :func:`mining_memory_bound` (about 1.3 GiB for 150,000
  captions x 30,000 images at the authors' release widths, 2,000 and 400).

Ties are broken by index (the lower index first), so the lists do not depend on
the order in which a top-k implementation visits equal scores, nor on the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from xmrbench.core.metrics.retrieval import all_finite
from xmrbench.core.sim.cross_attention import run_blocks


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
# Streaming: both candidate lists from one pass over tiles of the similarity matrix
# ---------------------------------------------------------------------------------

#: Images per tile of :func:`mine_candidates` by default (the rows of a tile).
MINING_BLOCK_IMAGES = 1024

#: Captions per tile of :func:`mine_candidates` by default (the columns of a tile). A tile
#: of 1,024 x 4,096 float32 scores is 16 MiB; its product ran at about the rate of a large
#: square GEMM on a 2-core CPU, where a block of 256 images against every caption ran at
#: half to three quarters of it (docs/bench.md, "Mining").
MINING_CHUNK_CAPTIONS = 4096

#: The most threads that fill the lists of a tile side by side (each takes a chunk of
#: temporaries, so the memory grows with them).
MINING_WORKERS = 8

#: The least room a running list has for new entries before it is reduced to its best
#: ``k``. By default a list has room for ``k`` new entries (:func:`list_slots`).
MIN_SLOTS = 64

#: Bytes of temporaries one chunk of rows may take; the kernel sizes its chunks to stay
#: within it (one row at least, whatever it takes).
CHUNK_BYTES = 16 * 1024**2

_EMPTY = torch.iinfo(torch.int64).min  # an empty slot: below every key
_LOW = 2**31 - 1  # low half of a key: _LOW - index, so that the lower index has the larger key
_BYTES_PER_ENTRY = 96  # per similarity entering a running list: indices, slots, score, key
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


def list_slots(k: int, slots: int | None, most: int) -> int:
    """The room of a running list of width ``k`` for new entries: ``slots`` if given, else
    ``max(k, MIN_SLOTS)``; at most ``most`` (the entries one tile brings a row).

    A list's threshold is renewed only when it is reduced, so the more room, the more
    entries pass under a stale threshold; the less room, the more often a list of ``k +
    slots`` keys is reduced. Room for about ``k`` balances the two (simulated on random
    scores at the release widths and at MS-COCO's h: within 5% of the best room tried at
    each, where a fixed room of 4,096 took 2.3x as long at MS-COCO's caption lists).
    """
    return max(1, min(slots if slots is not None else max(k, MIN_SLOTS), most))


def _reduce_bytes(k: int, slots: int) -> int:
    """Temporaries of one list while it is reduced: its slots, their top-k."""
    return 8 * (k + slots) + 40 * k


def _list_bytes(k: int, slots: int, entries: int, dtype_bytes: int) -> int:
    """Temporaries of one list when a single row exceeds a chunk's budget: four quarters
    (copy and mask of its ``entries`` scores; its reduction; its filtering again; its
    passing entries), each at least one row."""
    return 4 * (_reduce_bytes(k, slots) + (dtype_bytes + 1) * entries + _BYTES_PER_ENTRY * slots)


def mining_memory_bound(n_captions: int, k_texts: int, k_images: int, block_images: int = MINING_BLOCK_IMAGES,
                        dtype_bytes: int = 4, *, n_images: int = 0, chunk_captions: int = MINING_CHUNK_CAPTIONS,
                        slots: int | None = None, threads: int | None = None) -> int:
    """Peak memory in bytes :func:`mine_candidates` needs (its tensors and the allocator's
    cache), beyond the embeddings and whatever ``tile`` keeps; with ``n_images`` the
    ``(n_images, k_texts)`` int32 caption lists it returns are included (``n_images=0``
    leaves them out).

    Derivation (``N`` captions, ``b`` = ``block_images``, ``c`` = ``chunk_captions``
    (at most ``N``), ``k_t`` / ``k_i`` the widths, ``w_t`` / ``w_i`` the lists' room for new
    entries (:func:`list_slots`: ``slots``, or the width, at most ``c`` / ``b``), ``B`` =
    ``dtype_bytes`` of a tile, ``T`` the threads that fill the lists (torch's, at most
    ``MINING_WORKERS``), ``C`` = ``CHUNK_BYTES``):

    - result, caption lists: ``4 n_images k_t`` (int32, filled block by block);
    - running image lists: ``8 N (k_i + w_i)``: per caption, ``k_i + w_i`` int64 keys (score
      and image index in one key), the ``k_i`` best so far plus room for ``w_i`` new
      entries; a list is reduced to its best ``k_i`` when new entries would not fit. Plus
      ``20 N`` for the per-caption fill counts (int64), thresholds (float32) and the
      caption -> image map (int64);
    - during a block of images: its running caption lists ``8 b (k_t + w_t) + 20 b``, their
      int32 result ``4 b k_t``, and the tile with the mask of an exact finiteness test
      ``(B + 1) b c`` (the test runs only when the tile's sum is not finite);
    - at the end, instead (the block is gone): the image lists' int32 result ``4 N k_i``;
    - chunks: the lists are filled and reduced in chunks of rows whose temporaries stay
      within ``C`` (four quarters: the rows' scores and mask, their reductions, their
      filtering again, their passing entries), or within one row per quarter when that
      alone is larger, one chunk per thread: ``T max(C, L(k_i, w_i, b), L(k_t, w_t, c))``
      with ``L(k, w, e) = 4 (8 (k + w) + 40 k + (B + 1) e + 96 w)`` (a row's slots and their
      top-k; its ``e`` scores and mask; its entries); plus torch's top-k scratch
      ``16 W (T + 1)``, ``W = max(k_i + w_i, k_t + w_t)`` the widest row it sorts;
    - the C allocator's cache, ``A + 16 W T`` with ``A = 128 MiB``: glibc raises its
      mmap threshold to the largest block freed, up to 32 MiB (a chunk's temporaries, a
      per-caption vector, or the tile itself), then serves such sizes from its heap and
      keeps up to twice the threshold at the heap's top before returning memory; ``A``
      allows as much again for fragments. Each worker thread's heap may keep its freed
      top-k scratch. Not tensors, but resident memory of the process, which is what
      ``xmrbench bench mining`` measures.

    Hence ``bound = 4 n_images k_t + 8 N (k_i + w_i) + 20 N + max(8 b (k_t + w_t) + 20 b
    + 4 b k_t + (B + 1) b c, 4 N k_i) + T max(C, L(k_i, w_i, b), L(k_t, w_t, c)) + 16 W (2 T + 1)
    + A``. It grows with the tile, the room and the widths, never with ``N_img x N_txt``.
    """
    n, b, c = n_captions, block_images, min(chunk_captions, n_captions)
    w_i, w_t = list_slots(k_images, slots, b), list_slots(k_texts, slots, c)
    threads = min(torch.get_num_threads() if threads is None else threads, MINING_WORKERS)
    widest = max(k_images + w_i, k_texts + w_t)
    chunk = threads * max(CHUNK_BYTES, _list_bytes(k_images, w_i, b, dtype_bytes),
                          _list_bytes(k_texts, w_t, c, dtype_bytes))
    scratch = _TOPK_SCRATCH * widest * (threads + 1)
    cache = _ALLOCATOR_CACHE + _TOPK_SCRATCH * widest * threads
    during = 8 * b * (k_texts + w_t) + 20 * b + 4 * b * k_texts + (dtype_bytes + 1) * b * c
    return (4 * n_images * k_texts + 8 * n * (k_images + w_i) + 20 * n + max(during, 4 * n * k_images) + chunk
            + scratch + cache)


def _row_ranges(n_rows: int, parts: int) -> list[tuple[int, int]]:
    """``n_rows`` rows in up to ``parts`` consecutive ranges of (nearly) equal size."""
    step = -(-n_rows // max(1, parts))
    return [(r0, min(r0 + step, n_rows)) for r0 in range(0, n_rows, step)]


def _pairs_among(n_rows: int, chosen: Tensor, at: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """The pairs (``at``, ``cols``) of ``n_rows`` rows that fall on the rows ``chosen``, with
    their rows renumbered as positions in ``chosen``."""
    if not len(at):
        return at, cols
    where = torch.full((n_rows,), -1, dtype=torch.int64, device=chosen.device)
    where[chosen] = torch.arange(len(chosen), device=chosen.device)
    at = where[at]
    return at[at >= 0], cols[at >= 0]


class _RunningLists:
    """Per row (a query), the best ``k`` entries of the tiles seen so far (as
    :func:`order_keys`), in ``k + slots`` slots: entries that beat the row's threshold are
    appended, and a row's slots are reduced to the best ``k`` when new entries would
    overflow them.

    The threshold is the ``k``-th best score at the last reduction. Entries reach a row in
    ascending index order (the tiles are visited so), so a later entry with a score at or
    below the threshold ranks below ``k`` earlier ones (equal scores: the lower index
    first) and can never be among the best ``k``.
    """

    def __init__(self, n_rows: int, k: int, slots: int, device: torch.device):
        self.k, self.slots, self.width = k, slots, k + slots
        self.keys = torch.full((n_rows, self.width), _EMPTY, dtype=torch.int64, device=device)
        self.fill = torch.zeros(n_rows, dtype=torch.int64, device=device)
        self.threshold = torch.full((n_rows,), float("-inf"), dtype=torch.float32, device=device)
        self.rows_per_reduction = max(1, CHUNK_BYTES // 4 // _reduce_bytes(k, slots))

    def add_parts(self, scores: Tensor, first: int, offset: int, skip_rows: Tensor, skip_cols: Tensor,
                  parts: int) -> list[Callable[[], None]]:
        """:meth:`add` of ``scores`` split into up to ``parts`` calls over disjoint ranges of
        rows, to run in any order or side by side (each touches only its own rows)."""
        calls = []
        for r0, r1 in _row_ranges(scores.shape[0], parts):
            mine = (skip_rows >= r0) & (skip_rows < r1)
            calls.append(partial(self.add, scores[r0:r1], first + r0, offset, skip_rows[mine] - r0, skip_cols[mine]))
        return calls

    def add(self, scores: Tensor, first: int, offset: int, skip_rows: Tensor, skip_cols: Tensor) -> None:
        """Append the entries of ``scores (r, e)`` (rows ``first``.., entry indices
        ``offset``..; any strides) that beat their row's threshold, except the pairs at the
        positions (``skip_rows``, ``skip_cols``) of ``scores``.

        Works in chunks of rows whose copy and mask of passing entries take at most a
        quarter of ``CHUNK_BYTES`` (the reductions, the re-filtered rows and the passing
        entries take at most a quarter each, one after another). A row whose largest
        score does not beat its threshold has nothing to add, and once the thresholds
        have risen that is most rows: only the others are copied out.
        """
        n_rows, n_entries = scores.shape
        step = max(1, CHUNK_BYTES // 4 // (n_entries * (scores.element_size() + 1)))
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            block = scores[r0:r1]
            active = torch.nonzero(block.amax(1) > self.threshold[first + r0 : first + r1]).squeeze(1)
            if not len(active):
                continue
            skip = (skip_rows >= r0) & (skip_rows < r1)
            at, cols = skip_rows[skip] - r0, skip_cols[skip]
            if 4 * len(active) > r1 - r0:  # most rows: all of them
                self._add_rows(block, torch.arange(first + r0, first + r1, device=block.device), offset, at, cols)
            else:
                self._add_rows(block[active], active + (first + r0), offset, *_pairs_among(r1 - r0, active, at, cols))

    def _add_rows(self, scores: Tensor, rows: Tensor, offset: int, skip_at: Tensor, skip_cols: Tensor) -> None:
        """:meth:`add` of ``scores (len(rows), e)`` (any strides) of the rows ``rows``;
        ``skip_at``, ``skip_cols``: the positions of the pairs left out.

        One pass over the whole width: its passing entries are counted, the rows they
        would overflow are reduced and filtered again by their new threshold, and every row
        whose entries then fit its room is filled at once. Only a row with more passing
        entries than room even after its reduction (in a list's first tiles, when its
        threshold is still low) goes through :meth:`_add_sliced`, ``slots`` entries at a time.
        """
        passed, counts, crowded = self._passing(scores, rows)
        if len(crowded):
            self._add_sliced(scores[crowded], rows[crowded], offset,
                             *_pairs_among(len(rows), crowded, skip_at, skip_cols))
            passed[crowded] = False
            counts[crowded] = 0
        self._append(scores, passed, counts, rows, offset, skip_at, skip_cols)

    def _add_sliced(self, scores: Tensor, rows: Tensor, offset: int, skip_at: Tensor, skip_cols: Tensor) -> None:
        """:meth:`_add_rows` of ``slots`` entries at a time, so that a slice's entries always
        fit a reduced row."""
        for e0 in range(0, scores.shape[1], self.slots):
            e1 = min(e0 + self.slots, scores.shape[1])
            part = scores[:, e0:e1]
            passed, counts, _ = self._passing(part, rows)
            here = (skip_cols >= e0) & (skip_cols < e1)
            self._append(part, passed, counts, rows, offset + e0, skip_at[here], skip_cols[here] - e0)

    def _passing(self, part: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The entries of ``part (len(rows), e)`` that beat their row's threshold (a mask) and
        their counts per row (int32), after the rows they would overflow were reduced (those
        holding more than ``k``) and filtered again; and the positions of the rows they
        still overflow (none when ``e`` is at most ``slots``)."""
        passed = part > self.threshold[rows, None]
        counts = passed.sum(1, dtype=torch.int32)
        over = torch.nonzero(self.fill[rows] + counts > self.width).squeeze(1)
        if not len(over):
            return passed, counts, over
        full = over[self.fill[rows[over]] > self.k]
        for lo in range(0, len(full), self.rows_per_reduction):
            self._reduce(rows[full[lo : lo + self.rows_per_reduction]])
        if 4 * len(full) > len(rows):  # many rows: filter all again (no copy of their scores)
            torch.gt(part, self.threshold[rows, None], out=passed)
            counts = passed.sum(1, dtype=torch.int32)
        elif len(full):
            again = part[full] > self.threshold[rows[full], None]
            passed[full] = again
            counts[full] = again.sum(1, dtype=torch.int32)
        return passed, counts, over[self.fill[rows[over]] + counts[over] > self.width]

    def _append(self, part: Tensor, passed: Tensor, counts: Tensor, rows: Tensor, offset: int, skip_at: Tensor,
                skip_cols: Tensor) -> None:
        """Append the entries ``passed`` of ``part`` (``counts`` per row, each within its
        row's room), except the pairs at (``skip_at``, ``skip_cols``), in groups of rows
        whose entries fit the chunk budget."""
        if len(skip_at):
            counts.index_add_(0, skip_at, passed[skip_at, skip_cols].int(), alpha=-1)
            passed[skip_at, skip_cols] = False
        max_entries = max(self.slots, CHUNK_BYTES // 4 // _BYTES_PER_ENTRY)
        ends = counts.cumsum(0)
        lo = 0
        while lo < len(rows):
            before = int(ends[lo - 1]) if lo else 0
            hi = max(lo + 1, int(torch.searchsorted(ends, before + max_entries, right=True)))
            if int(ends[hi - 1]) > before:
                self._insert(part[lo:hi], passed[lo:hi], counts[lo:hi], rows[lo:hi], offset)
            lo = hi
        self.fill.index_add_(0, rows, counts.long())

    def _insert(self, scores: Tensor, passed: Tensor, counts: Tensor, rows: Tensor, offset: int) -> None:
        """Append the passing entries of the rows ``rows`` (``scores``, ``passed`` ``(r, e)``,
        entry indices ``offset``..)."""
        counts = counts.long()
        found = torch.nonzero(passed)  # (row, entry) pairs, grouped by row, entries ascending
        n = len(found)
        keys = order_keys(scores[found[:, 0], found[:, 1]], found[:, 1] + offset)
        del found
        # its slot: its row's next free slot, plus its rank among the row's entries
        # (its position among the entries less the entries of the rows before it)
        start = self.fill[rows] + rows * self.width - (counts.cumsum(0) - counts)
        dest = torch.repeat_interleave(start, counts, output_size=n)
        dest += torch.arange(n, device=dest.device)
        self.keys.view(-1).index_copy_(0, dest, keys)

    def _reduce(self, rows: Tensor) -> None:
        """Keep the best ``k`` of the rows ``rows``; their threshold becomes the ``k``-th score."""
        slots = self.keys[rows]  # a copy
        best = slots.topk(self.k, dim=1, sorted=False).values
        self.threshold[rows] = key_scores(best.amin(1))
        slots[:, : self.k] = best
        slots[:, self.k :] = _EMPTY
        del best
        self.keys.index_copy_(0, rows, slots)
        self.fill[rows] = self.k

    def result_parts(self, out: Tensor, parts: int) -> list[Callable[[], None]]:
        """The ``(n_rows, k)`` entry indices, most similar first, into the int32 ``out``: up to
        ``parts`` calls over disjoint ranges of rows."""
        return [partial(self._result, out, r0, r1) for r0, r1 in _row_ranges(self.keys.shape[0], parts)]

    def _result(self, out: Tensor, r0: int, r1: int) -> None:
        for lo in range(r0, r1, self.rows_per_reduction):
            hi = min(lo + self.rows_per_reduction, r1)
            best = self.keys[lo:hi].topk(self.k, dim=1, sorted=True).values
            if (best == _EMPTY).any():  # cannot happen with finite scores and a k the negatives allow
                raise ValueError("similarities must be finite")
            out[lo:hi] = key_index(best).to(torch.int32)


def mine_candidates(
    tile: Callable[[slice, slice], Tensor],
    *,
    n_images: int,
    caption_image: Tensor,
    k_texts: int,
    k_images: int,
    block_images: int = MINING_BLOCK_IMAGES,
    chunk_captions: int = MINING_CHUNK_CAPTIONS,
    slots: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Both candidate lists of offline mining from one pass over tiles of the matrix.

    ``tile(slice(a, b), slice(c, d)) -> (b - a, d - c)``: the similarities of images
    ``a..b-1`` to captions ``c..d-1`` (finite; ranked as float32; any strides; the kernel
    does not modify it), asked for blocks of ``block_images`` images, and within a block
    for chunks of ``chunk_captions`` captions in order. ``caption_image (N_txt,)``: the
    image of every caption, in ``0..n_images-1``.

    Returns ``i2t (n_images, k_texts)``: per image the most similar captions of other
    images, and ``t2i (N_txt, k_images)``: per caption the most similar images other than
    its own; int32, most similar first, equal scores by the lower index (also across
    tiles), on the tiles' device. The caption lists of a block of images are running
    top-k over its chunks of captions, the image lists running top-k over the blocks
    (:class:`_RunningLists`; ``slots``: the room of a list for new entries, by default
    its own width, :func:`list_slots`).
    On the CPU, the lists of a tile are filled on as many threads as torch has (at most
    ``MINING_WORKERS``), each on rows of its own and single-threaded (``run_blocks``); the tile itself is computed
    by the caller with every thread. The lists are exact integer work on the scores, so
    they do not depend on the number of threads. Peak memory: :func:`mining_memory_bound`. Raises ValueError when a ``k`` exceeds the
    negatives available or a tile has the wrong shape or non-finite scores.
    """
    caption_image = torch.as_tensor(caption_image).long()
    if caption_image.ndim != 1:
        raise ValueError(f"caption_image must be 1-D, got shape {tuple(caption_image.shape)}")
    n_txt = len(caption_image)
    for name, value in (("block_images", block_images), ("chunk_captions", chunk_captions),
                        ("slots", 1 if slots is None else slots)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if n_images < 1 or n_txt < 1:
        raise ValueError(f"nothing to mine: {n_images} images, {n_txt} captions")
    if int(caption_image.min()) < 0 or int(caption_image.max()) >= n_images:
        raise ValueError(f"caption_image must hold image indices in 0..{n_images - 1}")
    own_count = torch.bincount(caption_image.cpu(), minlength=n_images)
    _check_k(k_texts, n_txt - int(own_count.max()), "captions of other images")
    _check_k(k_images, n_images - 1, "other images")
    chunk = min(chunk_captions, n_txt)
    i2t: Tensor | None = None
    images: _RunningLists | None = None
    for b0 in range(0, n_images, block_images):
        b1 = min(b0 + block_images, n_images)
        captions: _RunningLists | None = None
        for c0 in range(0, n_txt, chunk):
            c1 = min(c0 + chunk, n_txt)
            sims = tile(slice(b0, b1), slice(c0, c1))
            if tuple(sims.shape) != (b1 - b0, c1 - c0):
                raise ValueError(f"tile({b0}:{b1}, {c0}:{c1}) returned shape {tuple(sims.shape)}, "
                                 f"expected {(b1 - b0, c1 - c0)}")
            if not all_finite(sims):
                raise ValueError("similarities must be finite")
            if i2t is None or images is None:
                workers = min(torch.get_num_threads(), MINING_WORKERS) if sims.device.type == "cpu" else 1
                caption_image = caption_image.to(sims.device)
                i2t = torch.empty((n_images, k_texts), dtype=torch.int32, device=sims.device)
                images = _RunningLists(n_txt, k_images, list_slots(k_images, slots, block_images), sims.device)
            if captions is None:
                captions = _RunningLists(b1 - b0, k_texts, list_slots(k_texts, slots, chunk), sims.device)
            own = caption_image[c0:c1]
            own_cols = torch.nonzero((own >= b0) & (own < b1)).squeeze(1)  # captions of the block's images
            own_rows = own[own_cols] - b0
            run_blocks(lambda call: call(),
                       captions.add_parts(sims, 0, c0, own_rows, own_cols, workers)
                       + images.add_parts(sims.T, c0, b0, own_cols, own_rows, workers), workers)
            del sims
        assert captions is not None and i2t is not None
        run_blocks(lambda call: call(), captions.result_parts(i2t[b0:b1], workers), workers)
        del captions
    assert i2t is not None and images is not None
    t2i = torch.empty((n_txt, k_images), dtype=torch.int32, device=i2t.device)
    run_blocks(lambda call: call(), images.result_parts(t2i, workers), workers)
    return i2t, t2i
