"""Cross-retrieval rank of every positive image-caption pair (AOQ, Sec. 7.1 and Figure 6).

A positive pair (image ``i``, caption ``j``) is ranked twice, on the similarity
matrix ``sims (N_img, N_txt)`` with caption ``j`` describing image ``j // c``
(``c`` captions per image, consecutive):

- ``r_i``: the rank of image ``i`` among all images for caption ``j``, against the
  ``N_img - 1`` negative pairs that share the caption;
- ``r_t``: the rank of caption ``j`` among the captions of *other* images for image
  ``i``, against the ``N_txt - c`` negative pairs that share the image (the image's
  other captions are not negatives and never count).

Both are 1-based, and ties are pessimistic as in ``retrieval.py``: a negative pair
scoring greater than *or equal to* the positive counts against it, so
``r = 1 + #(negatives scoring >= the positive)``; a constant matrix gets the worst
rank. The cross rank weighs the two fairly for their different numbers of negatives:
``max(c * r_i - (c - 1), r_t)`` (the paper's ``max(5 r_i - 4, r_t)`` for ``c = 5``),
so it is 1 only when the pair beats every negative of both kinds.

The matrix is read a block of image rows at a time; the temporaries stay a few
million booleans whatever its size (COCO 5K, 5,000 x 25,000, needs tens of MB on top
of the matrix itself).
"""

from __future__ import annotations

import numpy as np

from xmrbench.core.metrics.retrieval import _check_int, _rows_per_block

__all__ = ["CROSS_RANK_BINS", "cross_rank_counts", "cross_retrieval_ranks"]

#: The histogram's bins, (label, lowest rank, highest rank) with both ends included;
#: the paper prints only "rank 1" and "larger than 200", the bins between are ours.
CROSS_RANK_BINS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2-5", 2, 5),
    ("6-10", 6, 10),
    ("11-50", 11, 50),
    ("51-200", 51, 200),
    (">200", 201, float("inf")),
)


def _check_sims(sims: np.ndarray, captions_per_image: int) -> None:
    if sims.ndim != 2:
        raise ValueError(f"sims must be 2-D, got shape {sims.shape}")
    if not np.issubdtype(sims.dtype, np.floating):
        raise ValueError(f"sims must have a floating dtype, got {sims.dtype}")
    n_img, n_txt = sims.shape
    if n_img == 0:
        raise ValueError(f"sims is empty (shape {sims.shape})")
    if n_txt != captions_per_image * n_img:
        raise ValueError(
            f"sims has shape {sims.shape}: expected N_txt = captions_per_image * N_img"
            f" = {captions_per_image} * {n_img} = {captions_per_image * n_img} columns"
        )


def cross_retrieval_ranks(
    sims: np.ndarray, captions_per_image: int = 5, *, block_size: int | None = None
) -> np.ndarray:
    """The cross-retrieval rank of every positive pair, one per caption.

    ``sims (N_img, N_txt)``, ``N_txt = captions_per_image * N_img``, finite floats.
    Returns ``int64 (N_txt,)``: entry ``j`` is ``max(c * r_i - (c - 1), r_t)`` for the
    pair (image ``j // c``, caption ``j``), 1-based with pessimistic ties (module
    docstring). ``block_size`` is the number of image rows read at once (``None``:
    about four million scores per temporary).
    """
    c = _check_int(captions_per_image, "captions_per_image")
    sims = np.asarray(sims)
    _check_sims(sims, c)
    n_img, n_txt = sims.shape
    cols = np.arange(n_txt)
    pos = sims[cols // c, cols]  # (N_txt,) the positive pair's score
    at_least_img = np.zeros(n_txt, dtype=np.int64)  # per caption: images scoring >= its own
    at_least_txt = np.empty(n_txt, dtype=np.int64)  # per caption: other images' captions >= it
    step = _rows_per_block(n_txt, block_size)
    step_t = _rows_per_block(n_txt * c, block_size)
    for start in range(0, n_img, step):
        block = sims[start : start + step]  # (b, N_txt)
        if not np.isfinite(block).all():
            raise ValueError("sims holds NaN or inf values")
        at_least_img += np.count_nonzero(block >= pos, axis=0)
        for sub in range(start, start + block.shape[0], step_t):
            rows = sims[sub : min(sub + step_t, start + block.shape[0])]  # (b', N_txt)
            own = pos[sub * c : (sub + rows.shape[0]) * c].reshape(-1, c)  # (b', c)
            every = np.count_nonzero(rows[:, None, :] >= own[:, :, None], axis=2)  # (b', c)
            mine = np.count_nonzero(own[:, None, :] >= own[:, :, None], axis=2)  # (b', c) own captions
            at_least_txt[sub * c : (sub + rows.shape[0]) * c] = (every - mine).reshape(-1)
    r_i = at_least_img  # the own image counts itself once: 1 + (others >= it)
    r_t = 1 + at_least_txt
    return np.maximum(c * r_i - (c - 1), r_t)


def cross_rank_counts(ranks: np.ndarray) -> np.ndarray:
    """Positive pairs per bin of :data:`CROSS_RANK_BINS`: ``ranks (N,)`` 1-based ->
    ``int64 (len(CROSS_RANK_BINS),)``, summing to ``N``."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be a 1-D integer array, got shape {ranks.shape} dtype {ranks.dtype}")
    if ranks.size and ranks.min() < 1:
        raise ValueError("ranks are 1-based; got a rank below 1")
    return np.array([np.count_nonzero((ranks >= lo) & (ranks <= hi)) for _, lo, hi in CROSS_RANK_BINS], dtype=np.int64)
