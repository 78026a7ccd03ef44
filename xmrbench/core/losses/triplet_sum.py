"""Hinge triplet loss summed over all negatives (the "VSE0" loss of VSE++)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from xmrbench.core.losses.base import (
    Labels,
    RetrievalLoss,
    TripletParams,
    both_directions,
    per_pair,
    reduce_loss,
)


class TripletSumLoss(RetrievalLoss):
    """Bidirectional hinge loss summed over every negative in the batch.

    For every positive pair ``(i, j)`` with similarity ``s(i, j)``::

        sum_{j' neg of i} [m - s(i,j) + s(i,j')]_+  +  sum_{i' neg of j} [m - s(i,j) + s(i',j)]_+

    summed over positive pairs (``reduction="sum"``) or averaged over them
    (``"mean"``). Negatives are the pairs the positive mask leaves out, so with
    ``labels`` the other captions of the same image are never negatives.
    """

    class Params(TripletParams):
        margin: float = Field(0.2, ge=0)

    params: Params

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        *,
        sims: Tensor | None = None,
        labels: Labels | None = None,
    ) -> Tensor:
        """``img_emb (B_img, D)``, ``txt_emb (B_txt, D)``, optional ``sims (B_img, B_txt)``
        used instead of ``img_emb @ txt_emb.T``; returns a 0-d tensor."""
        img_emb, sims, labels = per_pair(img_emb, txt_emb, sims, labels, self.params.positives)
        i2t, t2i, n_pos = both_directions(img_emb, txt_emb, sims, labels, self.params.margin)
        return reduce_loss(i2t.sum() + t2i.sum(), n_pos, self.params.reduction)
