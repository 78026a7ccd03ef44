"""ADAPT's training objective (Wehrmann et al., AAAI 2020, Eq. 10-15), for any model.

The loss moves from the sum of hinges over every negative to the hardest negative
as training proceeds:

    J = tau(eps) * J_m + (1 - tau(eps)) * J_s,     tau(eps) = 1 - eta ** eps

where ``eps`` counts gradient steps (the first step is ``eps = 1``, so tau starts at
``1 - eta``), ``J_s`` is the sum over the batch's negatives of the hinge
``[alpha - s(a, b) + s(a, b')]_+`` in both directions (Eq. 12-13, the sum-of-hinges
triplet loss) and ``J_m`` its hardest-negative counterpart (Eq. 14-15, VSE++'s max
violation), both with margin ``alpha`` and summed over the batch. Eq. 12-13 print
``J_s`` without the ``[.]_+``; the released code clamps it, and without the clamp
the sum over negatives is a linear term that no positive pair can satisfy
(docs/errata.md). ``eta`` 0.991 is the released configuration's.

Optimiser, rate and clipping are the cell's ``train.*`` (the release: Adamax, rate
1e-3 with a warm-up, gradients clipped at norm 2).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.losses.triplet_sum import TripletSumLoss
from xmrbench.core.models.base import TrainBatch
from xmrbench.engine.training_method import GradientMethod, MethodParams, StepContext


def tau(step: int, eta: float) -> float:
    """The weight of the hardest-negative term after ``step`` gradient steps (Eq. 11)."""
    return 1.0 - eta**step


class ADAPTMethod(GradientMethod):
    """Gradient descent on Eq. 10: tau-mixed hardest-negative and summed hinges."""

    class Params(MethodParams):
        eta: float = Field(0.991, gt=0, lt=1)
        margin: float = Field(0.2, ge=0)
        positives: Literal["image", "pair"] = "pair"  # the released code's rule (diagonal only)

    params: Params
    uses_loss: ClassVar[bool] = False

    def setup(self) -> None:
        p = self.params
        self.sum_loss = TripletSumLoss(TripletSumLoss.Params(margin=p.margin, positives=p.positives))
        self.max_loss = HardestNegativeLoss(HardestNegativeLoss.Params(margin=p.margin, positives=p.positives))
        super().setup()

    def training_loss(self, ctx: StepContext, batch: TrainBatch) -> torch.Tensor:
        model = self.model
        img_emb = model.encode_images(batch.images)
        txt_emb = model.encode_texts(batch.text)
        sims = model.similarity(img_emb, txt_emb)
        weight = tau(ctx.progress.step + 1, self.params.eta)
        j_m = self.max_loss(img_emb, txt_emb, sims=sims, labels=batch.labels)
        j_s = self.sum_loss(img_emb, txt_emb, sims=sims, labels=batch.labels)
        loss = weight * j_m + (1.0 - weight) * j_s
        extra = model.auxiliary_loss(batch, img_emb, txt_emb)
        return loss if extra is None else loss + extra
