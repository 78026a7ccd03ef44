"""Label-based cross-modal retrieval: relevance from class labels, AP, precision@k.

Used by the papers that evaluate image <-> text retrieval on labelled datasets
(ACMR and its relatives on Wikipedia, NUS-WIDE, Pascal Sentence): a gallery item
is relevant to a query when the two share at least one class label, and a model
is scored by mean average precision and by precision-scope curves (precision at
k for a range of k).

Two mAPs are in use and never share a metric key (:func:`label_metrics`): the
paper's, AP over the whole ranked list divided by all relevant items (``i2t_map``
...), and the released ACMR code's "mAP@50", AP over the top 50 divided by the
relevant items found there (``i2t_map50`` ...). ``docs/metrics_labels.md`` has
both definitions side by side.

Scores are similarities, higher = better, ``sims (N_q, N_g)`` with one row per
query. Where a paper ranks by a distance (ACMR ranks by Euclidean distance), pass
the negated distance.

Ties are broken pessimistically, as in :mod:`retrieval`: within a group of equal
scores every irrelevant item is ranked before every relevant one. AP and
precision@k then depend only on the scores and the relevance, never on the
gallery order (items of equal score and equal relevance are interchangeable), and
a constant similarity matrix gets the worst value a ranking can have instead of
whatever the gallery order happens to give (a degenerate model whose scores are
all tied cannot look good by accident). Implemented as a lexicographic sort: a
stable sort of each row by relevance (irrelevant first), then a stable sort by
decreasing score, a block of query rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.retrieval import _check_int, _check_scores, _rows_per_block

__all__ = [
    "average_precision",
    "average_precision_and_precision",
    "label_metrics",
    "mean_average_precision",
    "precision_at_k",
    "relevance_from_labels",
]

Normalize = Literal["relevant", "hits"]

#: Scores per block for the sorting metrics: the two sorts keep values, two int64
#: index matrices and a few float64 temporaries per score, so the budget is smaller
#: than for ranks.
_SORT_BLOCK_ELEMENTS = 1 << 20


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # Sums over a gallery of tens of thousands of items are done in float64 where
    # the device has it; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _result_dtype(scores_dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 -> float32, float32 -> float32, float64 -> float64.
    return torch.promote_types(scores_dtype, torch.float32)


def _check_relevance(sims: torch.Tensor, relevance: torch.Tensor) -> None:
    if not isinstance(relevance, torch.Tensor):
        raise ValueError(f"relevance must be a torch.Tensor, got {type(relevance).__name__}")
    if relevance.dtype != torch.bool:
        raise ValueError(f"relevance must be a bool tensor, got {relevance.dtype}; use relevance.bool()")
    if relevance.shape != sims.shape:
        raise ValueError(
            f"relevance has shape {tuple(relevance.shape)} but sims has shape {tuple(sims.shape)}"
        )
    if relevance.device != sims.device:
        raise ValueError(f"relevance is on {relevance.device} but sims is on {sims.device}")


def _check_labels(labels: torch.Tensor, name: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be single-label (N,) or multi-hot (N, C), got shape {tuple(labels.shape)}"
        )
    if labels.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if labels.ndim == 1 and (labels.is_floating_point() or labels.is_complex()):
        raise ValueError(f"single-label {name} must hold integer class ids, got dtype {labels.dtype}")
    if labels.ndim == 2 and not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"multi-hot {name} must hold only 0/1 (or bool) values")


def relevance_from_labels(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> torch.Tensor:
    """Which gallery items are relevant to which queries: at least one shared label.

    Labels are either single-label class ids ``(N,)`` (integer) or multi-hot
    ``(N, C)`` (0/1 or bool); both arguments must use the same form. Returns a
    ``BoolTensor (N_q, N_g)`` on the labels' device. A multi-hot row with no label
    set is relevant to nothing.
    """
    _check_labels(query_labels, "query_labels")
    _check_labels(gallery_labels, "gallery_labels")
    if query_labels.ndim != gallery_labels.ndim:
        raise ValueError(
            f"query_labels {tuple(query_labels.shape)} and gallery_labels {tuple(gallery_labels.shape)}"
            " must both be single-label (N,) or both multi-hot (N, C)"
        )
    if query_labels.device != gallery_labels.device:
        raise ValueError(f"query_labels is on {query_labels.device} but gallery_labels on {gallery_labels.device}")
    if query_labels.ndim == 1:
        return query_labels[:, None] == gallery_labels[None, :]
    if query_labels.shape[1] != gallery_labels.shape[1]:
        raise ValueError(
            f"query_labels has {query_labels.shape[1]} classes but gallery_labels has {gallery_labels.shape[1]}"
        )
    # Shared-label counts by a matrix product of 0/1 values: every partial sum is a
    # non-negative integer, so "> 0.5" is exact even in float32.
    gallery_f = gallery_labels.to(torch.float32)
    n_q, n_g = query_labels.shape[0], gallery_labels.shape[0]
    relevance = torch.empty(n_q, n_g, dtype=torch.bool, device=query_labels.device)
    step = _rows_per_block(n_g, None)
    for start in range(0, n_q, step):
        shared = query_labels[start : start + step].to(torch.float32) @ gallery_f.T
        relevance[start : start + step] = shared > 0.5
    return relevance


def _sorted_relevance(sims_block: torch.Tensor, rel_block: torch.Tensor, depth: int, acc: torch.dtype) -> torch.Tensor:
    """Relevance of the top ``depth`` items of each row, by decreasing score, ties pessimistic.

    ``sims_block, rel_block (b, N_g)``; returns ``(b, depth)`` in ``acc``. Sorting
    by relevance first (irrelevant first, stable) and then stably by score orders
    every tie group irrelevant-first, whatever the gallery order.
    """
    by_relevance = torch.sort(rel_block.to(torch.uint8), dim=1, stable=True).indices
    scores = sims_block.gather(1, by_relevance)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth]
    return rel_block.gather(1, by_relevance.gather(1, order)).to(acc)


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, (int, torch.Tensor)) or not isinstance(ks, Sequence):
        raise ValueError(f"ks must be a sequence of ints such as (1, 5, 10), got {ks!r}")
    if len(ks) == 0:
        raise ValueError("ks is empty")
    return [_check_int(k, "every k in ks") for k in ks]


def _check_ap_args(at: int | None, normalize: str) -> int | None:
    if at is not None:
        at = _check_int(at, "at")
    if normalize not in ("relevant", "hits"):
        raise ValueError(f"normalize must be 'relevant' or 'hits', got {normalize!r}")
    return at


def _ranked_scan(
    sims: torch.Tensor,
    relevance: torch.Tensor,
    *,
    aps: Sequence[tuple[int | None, Normalize]],
    ks: Sequence[int],
    block_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AP for every ``(at, normalize)`` in ``aps`` and precision at every k in ``ks``,
    from one pessimistic sort of each block of rows.

    Arguments are checked by the callers. Returns ``(N_q, len(aps))`` and
    ``(N_q, len(ks))`` in the accumulator dtype on ``sims.device``.
    """
    n_q, n_g = sims.shape
    ap_depths = [n_g if at is None else min(at, n_g) for at, _ in aps]
    k_depths = torch.tensor([min(k, n_g) for k in ks], device=sims.device, dtype=torch.long)
    depth = max(ap_depths + [int(k) for k in k_depths])
    acc = _accumulator_dtype(sims.device)
    positions = torch.arange(1, depth + 1, device=sims.device, dtype=acc)
    ap = torch.empty(n_q, len(aps), dtype=acc, device=sims.device)
    precision = torch.empty(n_q, len(ks), dtype=acc, device=sims.device)
    step = _rows_per_block(n_g, block_size, budget=_SORT_BLOCK_ELEMENTS)
    with torch.no_grad():
        for start in range(0, n_q, step):
            rows = slice(start, start + step)
            rel_top = _sorted_relevance(sims[rows], relevance[rows], depth, acc)
            hits = rel_top.cumsum(dim=1)  # (b, depth): relevant items within the top i
            if aps:
                gain = rel_top * hits / positions  # rel_i * P@i
                n_relevant = relevance[rows].sum(dim=1).to(acc)
                for m, ((_, normalize), d) in enumerate(zip(aps, ap_depths, strict=True)):
                    numerator = gain[:, :d].sum(dim=1)
                    denominator = hits[:, d - 1] if normalize == "hits" else n_relevant
                    ap[rows, m] = torch.where(
                        denominator > 0, numerator / denominator.clamp_min(1), torch.zeros_like(numerator)
                    )
            if len(ks):
                precision[rows] = hits[:, k_depths - 1] / k_depths.to(acc)
    return ap, precision


def average_precision(
    sims: torch.Tensor,
    relevance: torch.Tensor,
    *,
    at: int | None = None,
    normalize: Normalize = "relevant",
    block_size: int | None = None,
) -> torch.Tensor:
    """Average precision of each query over the gallery ranked by decreasing score.

    ``sims (N_q, N_g)``, ``relevance (N_q, N_g)`` bool. Returns ``(N_q,)`` in
    float32 (float64 if ``sims`` is float64) on ``sims.device``.

    With ``rel_i`` the relevance of the item at position ``i`` (1-based) and
    ``P@i`` the precision of the top ``i``::

        AP = sum_{i <= L} rel_i * P@i / Z

    where ``L`` is the gallery size (``at=None``) or ``min(at, N_g)``.

    ``normalize`` picks ``Z``:

    - ``"relevant"``: the number of relevant items in the whole gallery, the
      textbook definition (with ``at=k`` a query with more relevant items than the
      top k can show cannot reach 1);
    - ``"hits"``: the number of relevant items found in the top ``L``; this is the
      "mAP@50" of the released ACMR evaluation (``at=50``). With ``at=None`` the
      two agree.

    A query with ``Z = 0`` (no relevant item, or no hit in the top k) gets AP 0.
    Ties count against the query: within equal scores irrelevant items rank
    first (see the module docstring). ``block_size`` is the number of query rows
    sorted at once.
    """
    _check_scores(sims, "sims", block_size=block_size)
    _check_relevance(sims, relevance)
    at = _check_ap_args(at, normalize)
    ap, _ = _ranked_scan(sims, relevance, aps=[(at, normalize)], ks=[], block_size=block_size)
    return ap[:, 0].to(_result_dtype(sims.dtype))


def mean_average_precision(
    sims: torch.Tensor,
    relevance: torch.Tensor,
    *,
    at: int | None = None,
    normalize: Normalize = "relevant",
    block_size: int | None = None,
) -> float:
    """The mean over queries of :func:`average_precision` (a fraction, 0-1)."""
    per_query = average_precision(sims, relevance, at=at, normalize=normalize, block_size=block_size)
    return float(per_query.to(_accumulator_dtype(per_query.device)).mean())


def precision_at_k(
    sims: torch.Tensor,
    relevance: torch.Tensor,
    ks: Sequence[int],
    *,
    block_size: int | None = None,
) -> torch.Tensor:
    """Precision of the top k of each query, for every k in ``ks`` (precision-scope curve).

    ``sims (N_q, N_g)``, ``relevance (N_q, N_g)`` bool, ``ks`` a sequence of
    positive ints. Returns ``(N_q, len(ks))`` in float32 (float64 if ``sims`` is
    float64) on ``sims.device``; column ``m`` is the fraction of relevant items in
    the top ``ks[m]``. A ``k`` larger than the gallery uses the whole gallery
    (precision over all ``N_g`` items). Ties rank irrelevant items first.
    """
    _check_scores(sims, "sims", block_size=block_size)
    _check_relevance(sims, relevance)
    ks = _check_ks(ks)
    _, precision = _ranked_scan(sims, relevance, aps=[], ks=ks, block_size=block_size)
    return precision.to(_result_dtype(sims.dtype))


def average_precision_and_precision(
    sims: torch.Tensor,
    relevance: torch.Tensor,
    ks: Sequence[int],
    *,
    at: int | None = None,
    normalize: Normalize = "relevant",
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`average_precision` ``(N_q,)`` and :func:`precision_at_k` ``(N_q, len(ks))``
    from one sort of the scores (the two functions' arguments and results)."""
    _check_scores(sims, "sims", block_size=block_size)
    _check_relevance(sims, relevance)
    at = _check_ap_args(at, normalize)
    ks = _check_ks(ks)
    ap, precision = _ranked_scan(sims, relevance, aps=[(at, normalize)], ks=ks, block_size=block_size)
    out = _result_dtype(sims.dtype)
    return ap[:, 0].to(out), precision.to(out)


def label_metrics(
    sims: torch.Tensor,
    relevance: torch.Tensor,
    *,
    maps: Sequence[int | None] = (None,),
    block_size: int | None = None,
) -> dict[str, float]:
    """Label-retrieval metrics of both directions: the rows query the columns (``i2t``)
    and the columns query the rows (``t2i``), as the ``label`` task records them.

    ``sims (N_img, N_txt)``, ``relevance (N_img, N_txt)`` bool. ``maps`` names the
    mAPs to compute by the depth they are cut at:

    - ``None``: ``i2t_map``, ``t2i_map`` and their mean ``avg_map``, AP over the whole
      ranked list divided by all relevant items (the ACMR paper's mAP);
    - ``50``: ``i2t_map50``, ``t2i_map50``, ``avg_map50``, AP over the top 50 divided
      by the relevant items found there (the released ACMR code's mAP@50).

    Other depths have no keys and raise ``ValueError``. Always also the
    precision-scope points ``i2t_p50`` ... ``i2t_p1000`` (and ``t2i_``): the mean over
    queries of (relevant items in the top K) / K for every K of
    ``keys.PRECISION_SCOPES`` up to the gallery size of that direction (``N_txt`` for
    image queries, ``N_img`` for text queries). A K larger than the gallery has no top
    K and is not recorded (its key is absent), so a curve never shows a flat stretch of
    whole-gallery precision; a gallery smaller than 50 records no precision at all.
    Ties count against the query (module docstring). One sort per direction serves
    every mAP and every K.
    """
    if isinstance(maps, (int, str)) or maps is None or not isinstance(maps, Sequence):
        raise ValueError(f"maps must be a sequence such as (None, 50), got {maps!r}")
    for at in maps:
        if at not in K.LABEL_MAP_KEYS:
            raise ValueError(f"maps holds {at!r}; known: None (the whole list), 50 (the released ACMR mAP@50)")
    _check_scores(sims, "sims", block_size=block_size)
    _check_relevance(sims, relevance)
    settings: list[tuple[int | None, Normalize]] = [(at, "relevant" if at is None else "hits") for at in maps]
    means: dict[str, list[float]] = {}
    precision_points: dict[str, float] = {}
    for direction, scores, rel in (
        ("i2t", sims, relevance),
        ("t2i", sims.t().contiguous(), relevance.t().contiguous()),
    ):
        scopes = [k for k in K.PRECISION_SCOPES if k <= scores.shape[1]]
        ap, precision = _ranked_scan(scores, rel, aps=settings, ks=scopes, block_size=block_size)
        means[direction] = ap.mean(dim=0).tolist()
        points = precision.mean(dim=0).tolist() if scopes else []
        precision_points.update({K.precision_key(direction, k): float(p) for k, p in zip(scopes, points, strict=True)})
    out: dict[str, float] = {}
    for m, at in enumerate(maps):
        i2t_key, t2i_key, avg_key = K.LABEL_MAP_KEYS[at]
        i2t, t2i = float(means["i2t"][m]), float(means["t2i"][m])
        out.update({i2t_key: i2t, t2i_key: t2i, avg_key: (i2t + t2i) / 2})
    return {**out, **precision_points}


# ---------------------------------------------------------------------------------
# Chance levels (the regression gate's learning bar, xmrbench/gate/chance.py)
# ---------------------------------------------------------------------------------


def chance_average_precision(gallery: int, relevant: np.ndarray | Sequence[int] | int) -> np.ndarray:
    """Expected AP of a uniformly random ranking of ``gallery`` items, ``relevant`` of them
    relevant (one value per entry of ``relevant``; 0 where nothing is relevant)."""
    r = np.asarray(relevant, dtype=np.float64)
    if gallery < 1:
        raise ValueError("the gallery must hold at least one item")
    if np.any(r < 0) or np.any(r > gallery):
        raise ValueError(f"relevant counts must lie in [0, {gallery}]")
    h = float(np.sum(1.0 / np.arange(1, gallery + 1, dtype=np.float64)))
    if gallery == 1:
        return np.where(r > 0, 1.0, 0.0)
    ap = (h + (r - 1.0) / (gallery - 1) * (gallery - h)) / gallery
    return np.where(r > 0, ap, 0.0)


def chance_label_map(relevance: torch.Tensor) -> dict[str, float]:
    """The chance levels of the whole-list label mAPs of a split, from its relevance
    ``(N_img, N_txt)`` (images query the texts, texts query the images), under their keys
    (:data:`MAP_CHANCE_KEYS`)."""
    rel = relevance.bool().cpu()
    n_img, n_txt = rel.shape
    i2t = float(chance_average_precision(n_txt, rel.sum(dim=1).numpy()).mean())
    t2i = float(chance_average_precision(n_img, rel.sum(dim=0).numpy()).mean())
    return {K.I2T_MAP_CHANCE: i2t, K.T2I_MAP_CHANCE: t2i, K.AVG_MAP_CHANCE: (i2t + t2i) / 2}
