"""Logistic regression loss of the two-branch similarity network
(Wang, Li, Lazebnik, TPAMI 2018, Eq. 7) with balanced pair sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from xmrbench.core.losses.base import (
    Labels,
    LossParams,
    RetrievalLoss,
    check_sims,
    positive_mask,
    positive_pairs,
    reduce_loss,
)


class LogisticLoss(RetrievalLoss):
    """``sum log(1 + exp(-z_ij p_ij))`` over sampled pairs (Eq. 7).

    ``p = sims`` are the similarity network's per-pair scores (required); ``z`` is +1
    for positive and -1 for negative pairs. Pairs are balanced as in Sec. 3.3 and
    5.1: every positive pair ``(i, j)`` contributes itself and ``neg_per_pos``
    negative pairs ``(i, j')``, each ``j'`` drawn uniformly (with replacement) among
    the texts of the batch that are negatives of image ``i``. An image without
    negatives in the batch contributes its positives only.

    The draws use ``torch.multinomial`` on torch's global RNG (that of ``sims``'s
    device), which the training engine seeds; the same seed gives the same
    negatives. ``log(1 + exp(t))`` is computed as ``softplus(t)``.
    """

    class Params(LossParams):
        neg_per_pos: int = Field(1, ge=1)

    params: Params

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        *,
        sims: Tensor | None = None,
        labels: Labels | None = None,
    ) -> Tensor:
        """``sims (B_img, B_txt)`` is required; the embeddings only give the batch sizes
        ``B_img = img_emb.shape[0]``, ``B_txt = txt_emb.shape[0]``. Returns a 0-d tensor."""
        if sims is None:
            raise ValueError(
                "the logistic loss needs sims: the per-pair scores of the similarity network"
            )
        check_sims(sims, img_emb.shape[0], txt_emb.shape[0])
        pos_mask = positive_mask(labels, *sims.shape, device=sims.device)
        img_idx, txt_idx = positive_pairs(pos_mask)
        total = F.softplus(-sims[img_idx, txt_idx]).sum()

        # One row of sampling weights per positive pair: 1 on the negatives of its image.
        neg_weights = (~pos_mask)[img_idx].to(torch.float32)
        has_neg = neg_weights.sum(dim=1) > 0
        if bool(has_neg.any()):
            anchors = img_idx[has_neg]
            n_draws = self.params.neg_per_pos
            drawn = torch.multinomial(neg_weights[has_neg], n_draws, replacement=True)
            neg_scores = sims[anchors[:, None].expand_as(drawn), drawn]
            total = total + F.softplus(neg_scores).sum()
        return reduce_loss(total, img_idx.numel(), self.params.reduction)
