"""Image <-> caption retrieval: ranks, hit@k ("recall@k"), medr, meanr, rsum.

The similarity matrix has one row per image and one column per caption,
``sims (N_img, N_txt)`` with ``N_txt = captions_per_image * N_img``; caption ``j``
describes image ``j // captions_per_image`` (the "precomp" order: the captions of
an image are consecutive). Higher scores mean more similar.

Ranks are 0-based, as inside the peers' evaluation code, and ties are broken
pessimistically: the rank of a positive is the number of *non-matching* items
whose score is greater than or equal to the positive's score. A constant matrix
therefore gets the worst possible rank, never a perfect score. (Sorting-based
evaluation code breaks ties by whatever order the sort happens to return, so a
degenerate model can look good by accident; counting cannot.)

Large matrices (for example COCO 5K, 5,000 x 25,000) are processed a block of
rows at a time, so the temporaries stay a small multiple of ``block_size`` rows
whatever the size of the matrix. ``block_size=None`` picks a block of roughly four
million scores.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from xmrbench.core.metrics.keys import (
    I2T_MEANR,
    I2T_MEDR,
    I2T_R1,
    I2T_R5,
    I2T_R10,
    RECALL_KEYS,
    RETRIEVAL_KEYS,
    RSUM,
    T2I_MEANR,
    T2I_MEDR,
    T2I_R1,
    T2I_R5,
    T2I_R10,
)

__all__ = [
    "fold_metrics",
    "i2t_ranks",
    "recall_at_k",
    "retrieval_metrics",
    "summarize",
    "t2i_ranks",
]

#: Scores per block when ``block_size`` is left to us (about 4 MiB of booleans).
_DEFAULT_BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- helpers
# Shared with labels.py and sentence.py.


def _check_int(value: object, name: str, *, minimum: int = 1) -> int:
    # Anything usable as an index (int, numpy integers) is accepted. bool is an int
    # subclass, but True as a k or a fold count is always a mistake.
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _rows_per_block(n_cols: int, block_size: int | None, *, budget: int = _DEFAULT_BLOCK_ELEMENTS) -> int:
    """Rows handled at once: ``block_size`` if given, else enough for ``budget`` scores."""
    if block_size is not None:
        return _check_int(block_size, "block_size")
    return max(1, budget // max(1, n_cols))


def sum_is_finite(scores: torch.Tensor) -> bool:
    """True when the sum of ``scores`` is finite, which proves every score finite (a NaN or
    an infinity makes any sum NaN or infinite) in one vectorised read. False leaves it
    open: a bad score, or an overflow of large finite ones; only then does the exact test
    (``torch.isfinite(...).all()``, a mask as large as the scores) need to run."""
    return bool(torch.isfinite(scores.sum()))


def all_finite(scores: torch.Tensor) -> bool:
    """True when every score is finite: :func:`sum_is_finite`, and the exact test only
    when the sum leaves it open."""
    return sum_is_finite(scores) or bool(torch.isfinite(scores).all())


def _check_scores(scores: torch.Tensor, name: str, *, block_size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``scores`` is a non-empty, finite, floating 2-D tensor."""
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {scores.dtype}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(scores.shape)})")
    if sum_is_finite(scores):
        return
    step = _rows_per_block(scores.shape[1], block_size)
    for start in range(0, scores.shape[0], step):
        if not bool(torch.isfinite(scores[start : start + step]).all()):
            raise ValueError(f"{name} holds NaN or inf values")


def _check_caption_layout(sims: torch.Tensor, captions_per_image: int) -> None:
    n_img, n_txt = sims.shape
    if n_txt != captions_per_image * n_img:
        raise ValueError(
            f"sims has shape {tuple(sims.shape)}: expected N_txt = captions_per_image * N_img"
            f" = {captions_per_image} * {n_img} = {captions_per_image * n_img} columns"
        )


def _validate(sims: torch.Tensor, captions_per_image: int, block_size: int | None) -> None:
    _check_int(captions_per_image, "captions_per_image")
    if block_size is not None:
        _check_int(block_size, "block_size")
    _check_scores(sims, "sims", block_size=block_size)
    _check_caption_layout(sims, captions_per_image)


def _check_ranks(ranks: torch.Tensor, name: str) -> None:
    if not isinstance(ranks, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(ranks).__name__}")
    if ranks.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ranks, got dtype {ranks.dtype}")
    if ranks.numel() == 0:
        raise ValueError(f"{name} is empty")
    if bool((ranks < 0).any()):
        raise ValueError(f"{name} holds negative values; ranks are 0-based")


# --------------------------------------------------------------------------- ranks


def _count(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``mask.sum(dim)`` as int32: summing the booleans' bytes into int32 is several times
    faster on a CPU than torch's default bool sum, which widens every element to int64."""
    return mask.view(torch.uint8).sum(dim=dim, dtype=torch.int32)


def _i2t_ranks(sims: torch.Tensor, captions_per_image: int, block_size: int | None) -> torch.Tensor:
    n_img, n_txt = sims.shape
    step = _rows_per_block(n_txt, block_size)
    offsets = torch.arange(captions_per_image, device=sims.device)
    ranks = torch.empty(n_img, dtype=torch.long, device=sims.device)
    with torch.no_grad():
        for start in range(0, n_img, step):
            block = sims[start : start + step]  # (b, N_txt)
            rows = torch.arange(start, start + block.shape[0], device=sims.device)
            pos_cols = rows[:, None] * captions_per_image + offsets  # (b, c)
            pos_scores = block.gather(1, pos_cols)  # (b, c)
            best = pos_scores.amax(dim=1, keepdim=True)  # (b, 1)
            # Everything scoring >= the best positive, minus the positives doing so
            # (the best one itself and any tied with it): the non-matching ones.
            at_least = _count(block >= best, dim=1)
            pos_at_least = (pos_scores >= best).sum(dim=1)
            ranks[start : start + block.shape[0]] = at_least - pos_at_least
    return ranks


def _t2i_ranks(sims: torch.Tensor, captions_per_image: int, block_size: int | None) -> torch.Tensor:
    n_img, n_txt = sims.shape
    step = _rows_per_block(n_txt, block_size)
    cols = torch.arange(n_txt, device=sims.device)
    with torch.no_grad():
        pos_scores = sims[cols // captions_per_image, cols]  # (N_txt,)
        at_least = torch.zeros(n_txt, dtype=torch.int32, device=sims.device)
        # Walk over image rows so each block is contiguous; count, per caption, the
        # images scoring >= its own image.
        for start in range(0, n_img, step):
            at_least += _count(sims[start : start + step] >= pos_scores, dim=0)
    # The caption's own image always counts itself once.
    return at_least.long() - 1


def i2t_ranks(
    sims: torch.Tensor, *, captions_per_image: int = 5, block_size: int | None = None
) -> torch.Tensor:
    """Image -> text rank of each image: where its best-ranked matching caption lands.

    ``sims (N_img, N_txt)``, ``N_txt = captions_per_image * N_img``. Returns a
    ``LongTensor (N_img,)`` of 0-based ranks on ``sims.device``.

    The score of the image's best caption is used, and the image's other captions
    never count against it. Ties are pessimistic: the rank is the number of
    captions of *other* images scoring >= that best score.

    ``block_size`` is the number of image rows processed at once (``None``: about
    four million scores per block).
    """
    _validate(sims, captions_per_image, block_size)
    return _i2t_ranks(sims, captions_per_image, block_size)


def t2i_ranks(
    sims: torch.Tensor, *, captions_per_image: int = 5, block_size: int | None = None
) -> torch.Tensor:
    """Text -> image rank of each caption: where its image lands among all images.

    ``sims (N_img, N_txt)`` (rows are still images; each *column* is a query).
    Returns a ``LongTensor (N_txt,)`` of 0-based ranks on ``sims.device``.

    Ties are pessimistic: the rank is the number of other images whose score for
    the caption is >= the score of the caption's own image.

    ``block_size`` is the number of image rows processed at once.
    """
    _validate(sims, captions_per_image, block_size)
    return _t2i_ranks(sims, captions_per_image, block_size)


# --------------------------------------------------------------------------- per-query metrics


def recall_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Per-query hit indicator at ``k``: 1.0 where ``rank < k``, else 0.0.

    ``ranks (N_q,)`` 0-based. Returns a ``float32`` tensor ``(N_q,)`` on
    ``ranks.device``; the caller averages (and multiplies by 100 for percent).

    In image-text retrieval "recall@k" is really hit@k: a query counts as found if
    *at least one* relevant item is in the top k, however many relevant items it
    has (an image with five captions needs only one of them in the top k). This is
    the definition every peer paper uses, so it is the one we use.
    """
    _check_ranks(ranks, "ranks")
    k = _check_int(k, "k")
    return (ranks < k).to(torch.float32)


# --------------------------------------------------------------------------- summaries


def _median_rank(ranks: torch.Tensor) -> float:
    """``floor(median(ranks)) + 1``, identical to ``np.floor(np.median(ranks)) + 1``.

    numpy's median averages the two middle values of an even-length array; for
    integer ranks the floor of that average is ``(a + b) // 2``. (This is *not*
    the lower median that ``torch.median`` returns: ranks 0 and 10 give 6, not 1.)
    """
    ordered, _ = torch.sort(ranks)
    n = ordered.numel()
    mid = n // 2
    if n % 2 == 1:
        middle = int(ordered[mid])
    else:
        middle = (int(ordered[mid - 1]) + int(ordered[mid])) // 2
    return float(middle + 1)


def _direction_summary(ranks: torch.Tensor) -> tuple[float, float, float, float, float]:
    """(R@1, R@5, R@10 in percent, medr, meanr) of one direction."""
    recalls = tuple(100.0 * float(recall_at_k(ranks, k).to(torch.float64).mean()) for k in (1, 5, 10))
    meanr = float(ranks.to(torch.float64).mean()) + 1.0
    return (*recalls, _median_rank(ranks), meanr)  # type: ignore[return-value]


def summarize(i2t: torch.Tensor, t2i: torch.Tensor) -> dict[str, float]:
    """The usual retrieval table row from 0-based ranks of both directions.

    ``i2t (N_img,)`` and ``t2i (N_txt,)`` are 0-based ranks. Returns a dict with
    exactly the keys of ``RETRIEVAL_KEYS``:

    - ``*_r1/_r5/_r10``: hit@k in percent (see :func:`recall_at_k`);
    - ``*_medr``: ``floor(median(rank)) + 1``, where for an even number of queries
      the median is the mean of the two middle ranks (numpy's median), so the
      value equals ``np.floor(np.median(ranks)) + 1`` exactly;
    - ``*_meanr``: ``mean(rank) + 1``;
    - ``rsum``: the sum of the six recalls.
    """
    _check_ranks(i2t, "i2t")
    _check_ranks(t2i, "t2i")
    i_r1, i_r5, i_r10, i_medr, i_meanr = _direction_summary(i2t)
    t_r1, t_r5, t_r10, t_medr, t_meanr = _direction_summary(t2i)
    values = {
        I2T_R1: i_r1, I2T_R5: i_r5, I2T_R10: i_r10, I2T_MEDR: i_medr, I2T_MEANR: i_meanr,
        T2I_R1: t_r1, T2I_R5: t_r5, T2I_R10: t_r10, T2I_MEDR: t_medr, T2I_MEANR: t_meanr,
    }
    values[RSUM] = sum(values[key] for key in RECALL_KEYS)
    return {key: values[key] for key in RETRIEVAL_KEYS}


def retrieval_metrics(
    sims: torch.Tensor, *, captions_per_image: int = 5, block_size: int | None = None
) -> dict[str, float]:
    """All of ``RETRIEVAL_KEYS`` for ``sims (N_img, N_txt)`` evaluated as one gallery.

    This is the "5K" protocol on COCO ``testall`` and the only protocol on
    Flickr30K. See :func:`summarize` for the definitions.
    """
    _validate(sims, captions_per_image, block_size)
    return summarize(
        _i2t_ranks(sims, captions_per_image, block_size),
        _t2i_ranks(sims, captions_per_image, block_size),
    )


def fold_metrics(
    sims: torch.Tensor,
    *,
    n_folds: int = 5,
    captions_per_image: int = 5,
    block_size: int | None = None,
) -> dict[str, float]:
    """The COCO "1K" protocol: the mean of ``n_folds`` consecutive, unshuffled folds.

    The images of ``sims (N_img, N_txt)`` are split into ``n_folds`` consecutive
    equal folds, each with its own captions; every fold is evaluated on its own
    diagonal block with :func:`retrieval_metrics`, and every key is averaged over
    the folds (medr and meanr included, as the peers do). ``rsum`` is then
    recomputed from the averaged recalls rather than averaged or summed per fold
    (several peers print a wrong fold rsum; this one is the sum of the six printed
    recalls).

    Raises ``ValueError`` if ``N_img`` is not divisible by ``n_folds``.
    """
    n_folds = _check_int(n_folds, "n_folds")
    _validate(sims, captions_per_image, block_size)
    n_img = sims.shape[0]
    if n_img % n_folds != 0:
        raise ValueError(f"N_img = {n_img} images cannot be split into {n_folds} equal folds")
    fold_img = n_img // n_folds
    fold_txt = fold_img * captions_per_image
    per_fold = []
    for fold in range(n_folds):
        block = sims[fold * fold_img : (fold + 1) * fold_img, fold * fold_txt : (fold + 1) * fold_txt]
        per_fold.append(
            summarize(
                _i2t_ranks(block, captions_per_image, block_size),
                _t2i_ranks(block, captions_per_image, block_size),
            )
        )
    return average_folds(per_fold)


def average_folds(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Average per-fold retrieval metrics; rsum is recomputed from the averaged recalls."""
    if not per_fold:
        raise ValueError("no folds to average")
    mean = {key: sum(fold[key] for fold in per_fold) / len(per_fold) for key in RETRIEVAL_KEYS}
    mean[RSUM] = sum(mean[key] for key in RECALL_KEYS)
    return mean
