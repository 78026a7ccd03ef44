"""Image encoders for precomputed features."""

from __future__ import annotations

import math

import torch
from torch import nn


class FCImageEncoder(nn.Module):
    """A linear projection of precomputed features: ``(B, D_in)`` or ``(B, R, D_in)`` -> ``(..., D)``.

    Xavier-uniform initialisation, as in the VSE++/SCAN family.
    """

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_dim)
        bound = math.sqrt(6.0) / math.sqrt(in_dim + embed_dim)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(images)

