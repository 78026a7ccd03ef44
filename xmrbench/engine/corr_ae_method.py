"""Corr-AE's training (Feng, Wang, Li, ACM MM 2014): gradient descent on the model's own
objective, ``(1 - alpha) * (L_I + L_T) + alpha * L_C``
(:meth:`~xmrbench.core.models.corr_ae.CorrAE.objective`), with one optimiser over both
autoencoders (``train.optimizer``, ``train.lr``, clipping and decay as the cell sets
them).

The objective belongs to the model (its ``alpha`` is a model parameter, beside the
layer sizes it weighs), so the method has no parameters of its own and no cell loss:
Corr-AE cells set ``loss: null`` and ``method: {name: corr_ae}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from xmrbench.core.models.base import TrainBatch
from xmrbench.core.models.corr_ae import CorrAE
from xmrbench.engine.training_method import GradientMethod, StepContext
from xmrbench.errors import TrainingError


class CorrAEMethod(GradientMethod):
    """One optimiser descending the Corr-AE objective of each batch of (image, text) pairs."""

    models = ("corr_ae",)
    uses_loss: ClassVar[bool] = False  # the objective is the model's (CorrAE.objective)

    def __init__(self, params: Any, **kw: Any):
        super().__init__(params, **kw)
        if not isinstance(self.model, CorrAE):
            raise TrainingError(f"training method 'corr_ae' trains a CorrAE model, not a {type(self.model).__name__}")

    def training_loss(self, ctx: StepContext, batch: TrainBatch) -> torch.Tensor:
        if batch.text is None or batch.labels is None:
            raise TrainingError("Corr-AE trains on (image, text) pairs; the batch has no texts", where=ctx.label)
        return self.model.objective(batch.images, batch.text, batch.labels[1]).total
