"""Gradient reversal for adversarial alignment (A3VSE's discriminators, ACMR's
modality classifier).

``reverse_gradient(x, coef)`` is the identity in the forward pass and multiplies the
gradient by ``-coef`` in the backward pass: a discriminator placed behind it learns
to tell its inputs apart while the layers before it learn to make them
indistinguishable, in one backward pass. ``progress_coefficient(p)`` is the usual
schedule of that coefficient over training progress ``p`` in [0, 1]:
``2 / (1 + exp(-gamma p)) - 1``, 0 at the start (the discriminator is untrained
noise) rising towards 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coef: float) -> Tensor:  # type: ignore[override]
        ctx.coef = coef
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.coef * grad, None


def reverse_gradient(x: Tensor, coef: float = 1.0) -> Tensor:
    """Identity forward; gradient times ``-coef`` backward."""
    return _Reverse.apply(x, float(coef))


def progress_coefficient(p: float, gamma: float = 10.0) -> float:
    """``2 / (1 + exp(-gamma p)) - 1`` for training progress ``p`` in [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {p}")
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0
