"""Hinge triplet loss on the hardest negative only (VSE++ "max violation")."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from xmrbench.core.losses.base import (
    Labels,
    RetrievalLoss,
    TripletParams,
    both_directions,
    max_per_row,
    per_pair,
    reduce_loss,
)


class HardestNegativeLoss(RetrievalLoss):
    """Bidirectional hinge loss on the hardest negative in each direction (VSE++).

    For every positive pair ``(i, j)`` with similarity ``s(i, j)``::

        max_{j' neg of i} [m - s(i,j) + s(i,j')]_+  +  max_{i' neg of j} [m - s(i,j) + s(i',j)]_+

    summed over positive pairs (``reduction="sum"``) or averaged over them
    (``"mean"``). A direction without negatives contributes 0.

    Difference from the VSE++ code: it masks only the diagonal of the similarity
    matrix, so two captions of the same image in one batch count as negatives of
    each other's image there. Here negatives come from the labels' positive mask, so
    they never do (``positives="image"``, the default); ``positives="pair"`` follows the
    VSE++ code (:class:`~xmrbench.core.losses.base.TripletParams`). With
    ``labels=None`` (one caption per image) both coincide.
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
        return reduce_loss(max_per_row(i2t).sum() + max_per_row(t2i).sum(), n_pos, self.params.reduction)
