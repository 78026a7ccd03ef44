"""Bidirectional ranking loss with neighbourhood constraints of the two-branch
embedding network (Wang, Li, Lazebnik, TPAMI 2018, Eq. 3 and Eq. 6)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import Tensor

from xmrbench.core.losses.base import (
    Labels,
    LossParams,
    RetrievalLoss,
    check_embeddings,
    neighbour_mask,
    positive_mask,
    positive_pairs,
    reduce_loss,
    sum_top_k,
    triplet_violations,
)

# Added under the square root so that the distance of two equal embeddings has a
# finite (zero) gradient; it shifts distances by at most 1e-6.
DIST_EPS = 1e-12


def euclidean_distances(a: Tensor, b: Tensor) -> Tensor:
    """``d[p, q] = sqrt(||a_p - b_q||^2 + DIST_EPS)`` for ``a (P, D)``, ``b (Q, D)``: ``(P, Q)``.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` (one matrix product, clamped at 0), which is several
    times faster than pairwise differences on a CPU. Near 0 it loses precision to
    cancellation (about ``sqrt(eps_float) ~ 3e-4`` in float32 for unit vectors), which
    is far below the margin and does not change which triplets violate it; the
    gradient stays finite thanks to ``DIST_EPS``.
    """
    sq = (a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2.0 * (a @ b.T)).clamp_min(0.0)
    return torch.sqrt(sq + DIST_EPS)


def ranking_term(
    dists: Tensor, pos_mask: Tensor, neg_mask: Tensor, margin: float, top_k: int | None
) -> Tensor:
    """Sum over (anchor a, positive p) pairs of ``pos_mask`` of the ``top_k`` largest
    ``[margin + dists[a, p] - dists[a, n]]_+`` over the negatives ``n`` of ``neg_mask``."""
    rows, cols = positive_pairs(pos_mask)
    # Distances rank the other way round from similarities: use -d as the score.
    violations = triplet_violations(-dists, rows, cols, neg_mask, margin)
    return sum_top_k(violations, top_k).sum()


class BidirectionalRankingLoss(RetrievalLoss):
    """Two-branch embedding network loss, Eq. 6 (Eq. 3 when ``lambda3 = lambda4 = 0``).

    With ``d`` the Euclidean distance between embeddings and ``m`` the margin::

        lambda1 * sum [m + d(x_i, y_j) - d(x_i, y_k)]_+   (Eq. 1: image anchor, y_k negative of x_i)
      + lambda2 * sum [m + d(x_i, y_j) - d(x_k, y_j)]_+   (Eq. 2: text anchor, x_k negative of y_j)
      + lambda3 * sum [m + d(x_i, x_j) - d(x_i, x_k)]_+   (Eq. 4: x_j in N(x_i), x_k not, k != i)
      + lambda4 * sum [m + d(y_i, y_j) - d(y_i, y_k)]_+   (Eq. 5: y_j in N(y_i), y_k not, k != i)

    The cross-modal sums run over positive pairs ``(x_i, y_j)``. ``N(x_i)`` holds the
    other images of the batch that share a positive text with ``x_i``; ``N(y_i)`` the
    other texts that share a positive image with ``y_i`` (the other captions of its
    image; a text whose image is not in the batch has none). With one image per label
    no image has a neighbour and the lambda3 term is 0, as the paper notes for
    Flickr30K and MS-COCO (Sec. 5.2).

    Triplet selection (Sec. 5.1, "keep at most K triplets with highest nonnegative
    loss"): for every (anchor, positive) pair only the ``top_k`` largest hinge values
    over its negatives are summed, in all four terms; ``top_k=None`` keeps them all.
    A term whose weight is 0 is not computed.

    Distances are computed from the embeddings, so ``sims`` is ignored. Defaults are
    the paper's image-sentence setting (m = 0.1, lambda1 = 1, lambda2 = 2, K = 50);
    the released two-branch code differs (see docs/peers.md#two-branch-networks), a recipe picks its values.
    """

    class Params(LossParams):
        margin: float = Field(0.1, ge=0)
        lambda1: float = Field(1.0, ge=0)
        lambda2: float = Field(2.0, ge=0)
        lambda3: float = Field(0.0, ge=0)
        lambda4: float = Field(0.0, ge=0)
        top_k: Annotated[int, Field(ge=1)] | None = 50

        @model_validator(mode="after")
        def _some_term(self):
            if not any((self.lambda1, self.lambda2, self.lambda3, self.lambda4)):
                raise ValueError("at least one of lambda1..lambda4 must be positive")
            return self

    params: Params

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        *,
        sims: Tensor | None = None,
        labels: Labels | None = None,
    ) -> Tensor:
        """``img_emb (B_img, D)``, ``txt_emb (B_txt, D)``; ``sims`` is ignored.
        Returns a 0-d tensor."""
        check_embeddings(img_emb, txt_emb)
        p = self.params
        n_img, n_txt = img_emb.shape[0], txt_emb.shape[0]
        pos_mask = positive_mask(labels, n_img, n_txt, device=img_emb.device)
        margin, top_k = p.margin, p.top_k
        terms: list[Tensor] = []
        if p.lambda1 or p.lambda2:
            d_xy = euclidean_distances(img_emb, txt_emb)
            if p.lambda1:
                terms.append(p.lambda1 * ranking_term(d_xy, pos_mask, ~pos_mask, margin, top_k))
            if p.lambda2:
                terms.append(
                    p.lambda2 * ranking_term(d_xy.T, pos_mask.T, ~pos_mask.T, margin, top_k)
                )
        within = ((p.lambda3, img_emb, pos_mask), (p.lambda4, txt_emb, pos_mask.T))
        for weight, emb, mask in within:
            if weight:
                neighbours = neighbour_mask(mask)
                eye = torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
                non_neighbours = ~neighbours & ~eye
                d_within = euclidean_distances(emb, emb)
                term = ranking_term(d_within, neighbours, non_neighbours, margin, top_k)
                terms.append(weight * term)
        total = torch.stack(terms).sum()
        return reduce_loss(total, int(pos_mask.sum()), p.reduction)
