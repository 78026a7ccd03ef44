"""Logistic regression loss of the two-branch similarity network
(Wang, Li, Lazebnik, TPAMI 2018, Eq. 7) with balanced pair sampling."""

from __future__ import annotations

from collections.abc import Callable

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

    The draws use ``torch.multinomial`` on torch's global RNG (that of the
    embeddings' device), which the training engine seeds; the same seed gives the same
    negatives. ``log(1 + exp(t))`` is computed as ``softplus(t)``.

    Instead of the full ``sims`` matrix, a model whose every score costs a forward
    pass (the similarity network) may pass ``pair_scores(img_idx, txt_idx) -> (P,)``,
    which scores only the sampled pairs; both routes draw the same negatives.
    """

    #: the engine may pass ``pair_scores`` instead of computing the full ``sims``
    scores_pairs = True

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
        pair_scores: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """``sims (B_img, B_txt)`` or ``pair_scores`` is required; the embeddings only give
        the batch sizes ``B_img = img_emb.shape[0]``, ``B_txt = txt_emb.shape[0]``.
        Returns a 0-d tensor."""
        n_img, n_txt = img_emb.shape[0], txt_emb.shape[0]
        if sims is not None:
            check_sims(sims, n_img, n_txt)
            score = lambda rows, cols: sims[rows, cols]  # noqa: E731
        elif pair_scores is not None:
            score = pair_scores
        else:
            raise ValueError(
                "the logistic loss needs sims or pair_scores: the per-pair scores of the similarity network"
            )
        device = img_emb.device
        pos_mask = positive_mask(labels, n_img, n_txt, device=device)
        img_idx, txt_idx = positive_pairs(pos_mask)
        rows, cols, signs = [img_idx], [txt_idx], [torch.full_like(img_idx, -1)]

        # One row of sampling weights per positive pair: 1 on the negatives of its image.
        neg_weights = (~pos_mask)[img_idx].to(torch.float32)
        has_neg = neg_weights.sum(dim=1) > 0
        if bool(has_neg.any()):
            anchors = img_idx[has_neg]
            drawn = torch.multinomial(neg_weights[has_neg], self.params.neg_per_pos, replacement=True)
            rows.append(anchors[:, None].expand_as(drawn).reshape(-1))
            cols.append(drawn.reshape(-1))
            signs.append(torch.ones_like(drawn.reshape(-1)))
        scores = score(torch.cat(rows), torch.cat(cols))
        # softplus(-z p): z = +1 for positives (sign -1 on p), -1 for negatives
        total = F.softplus(torch.cat(signs).to(scores.dtype) * scores).sum()
        return reduce_loss(total, img_idx.numel(), self.params.reduction)
