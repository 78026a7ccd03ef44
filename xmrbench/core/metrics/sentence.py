"""Sentence-to-sentence retrieval: given a caption, find the other captions of its image.

The protocol of the two-branch embedding network paper (Wang et al., "Learning
Two-Branch Neural Networks for Image-Text Matching Tasks", TPAMI 2018, Table 4):
each caption queries all *other* captions (itself excluded); the relevant ones
are the other captions of the same image, and the caption counts as found at k
if any of them is in the top k (hit@k, like image-caption "recall@k").

``txt_sims (N_txt, N_txt)`` holds caption-caption similarities, higher = better,
one row per query caption, in the "precomp" order (caption ``j`` describes image
``j // captions_per_image``). Ties are pessimistic, as in :mod:`retrieval`.
"""

from __future__ import annotations

import torch

from xmrbench.core.metrics.keys import S2S_R1, S2S_R5, S2S_R10
from xmrbench.core.metrics.retrieval import _check_int, _check_scores, _rows_per_block, recall_at_k

__all__ = ["s2s_ranks", "sentence_metrics"]


def _validate(txt_sims: torch.Tensor, captions_per_image: int, block_size: int | None) -> None:
    _check_int(captions_per_image, "captions_per_image")
    if captions_per_image < 2:
        raise ValueError(
            "sentence retrieval needs captions_per_image >= 2: with one caption per image"
            " no caption has a relevant other caption"
        )
    if block_size is not None:
        _check_int(block_size, "block_size")
    _check_scores(txt_sims, "txt_sims", block_size=block_size)
    n_rows, n_cols = txt_sims.shape
    if n_rows != n_cols:
        raise ValueError(f"txt_sims must be square (N_txt, N_txt), got shape {tuple(txt_sims.shape)}")
    if n_rows % captions_per_image != 0:
        raise ValueError(f"N_txt = {n_rows} is not a multiple of captions_per_image = {captions_per_image}")


def s2s_ranks(
    txt_sims: torch.Tensor, *, captions_per_image: int = 5, block_size: int | None = None
) -> torch.Tensor:
    """Rank of each caption's best-ranked sibling among all other captions.

    ``txt_sims (N_txt, N_txt)``. Returns a ``LongTensor (N_txt,)`` of 0-based ranks
    on ``txt_sims.device``. The query caption itself is excluded from its own
    ranking (its diagonal score is ignored). The score of the best sibling (other
    caption of the same image) is used; the rank is the number of captions of
    *other* images scoring >= it, so ties are pessimistic and the other siblings
    never count against it.

    ``block_size`` is the number of query rows processed at once.
    """
    _validate(txt_sims, captions_per_image, block_size)
    n_txt = txt_sims.shape[0]
    c = captions_per_image
    device = txt_sims.device
    step = _rows_per_block(n_txt, block_size)
    offsets = torch.arange(c, device=device)
    ranks = torch.empty(n_txt, dtype=torch.long, device=device)
    with torch.no_grad():
        for start in range(0, n_txt, step):
            block = txt_sims[start : start + step]  # (b, N_txt)
            rows = torch.arange(start, start + block.shape[0], device=device)
            group_cols = (rows // c)[:, None] * c + offsets  # (b, c): the caption's image's captions
            group_scores = block.gather(1, group_cols)
            is_self = group_cols == rows[:, None]
            best = group_scores.masked_fill(is_self, float("-inf")).amax(dim=1, keepdim=True)
            # Everything >= the best sibling, minus the same-image captions doing so
            # (the query itself included, whatever its diagonal score).
            at_least = (block >= best).sum(dim=1)
            group_at_least = (group_scores >= best).sum(dim=1)
            ranks[start : start + block.shape[0]] = at_least - group_at_least
    return ranks


def sentence_metrics(
    txt_sims: torch.Tensor, *, captions_per_image: int = 5, block_size: int | None = None
) -> dict[str, float]:
    """``{s2s_r1, s2s_r5, s2s_r10}`` in percent (hit@k) for ``txt_sims (N_txt, N_txt)``."""
    ranks = s2s_ranks(txt_sims, captions_per_image=captions_per_image, block_size=block_size)
    return {
        key: 100.0 * float(recall_at_k(ranks, k).to(torch.float64).mean())
        for key, k in ((S2S_R1, 1), (S2S_R5, 5), (S2S_R10, 10))
    }
