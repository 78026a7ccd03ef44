"""Region relationship reasoning: a residual graph convolution over the regions of an
image (VSRN, Li et al. ICCV 2019, Section 3.1, Eq. 1-3).

The graph is fully connected over the ``R`` regions of one image; its edge weights
are the affinities of the regions' own embeddings::

    R_ij  = phi(v_i) . psi(v_j) / R                 (Eq. 1; the division by R follows the
                                                     released code, which normalises the
                                                     affinity by the number of regions)
    V*    = W_r (R (V W_g)) + V                     (Eq. 3: propagate, project, residual)

``phi``, ``psi`` and ``W_g`` are linear maps ``D -> D_inter``; ``W_r`` is a linear
map ``D_inter -> D`` followed by batch normalisation over the feature channels. As in
the released code the batch-norm scale and shift start at zero, so an untrained layer
is the identity and reasoning is learned on top of the region features.
"""

from __future__ import annotations

import torch
from torch import nn


class RegionGCN(nn.Module):
    """One residual reasoning layer: ``regions (B, R, D) -> (B, R, D)``."""

    def __init__(self, dim: int, *, inter_dim: int | None = None):
        super().__init__()
        inter = inter_dim or dim
        self.phi = nn.Linear(dim, inter)
        self.psi = nn.Linear(dim, inter)
        self.g = nn.Linear(dim, inter)
        self.w_r = nn.Linear(inter, dim)
        self.bn = nn.BatchNorm1d(dim)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def affinity(self, regions: torch.Tensor) -> torch.Tensor:
        """``regions (B, R, D)`` -> affinity ``(B, R, R)``, ``[b, i, j] = phi(v_i) . psi(v_j) / R`` (Eq. 1)."""
        n_regions = regions.shape[1]
        return self.phi(regions) @ self.psi(regions).transpose(1, 2) / n_regions

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """``regions (B, R, D)`` -> reasoned regions ``(B, R, D)`` (Eq. 3)."""
        propagated = self.affinity(regions) @ self.g(regions)  # (B, R, D_inter)
        projected = self.w_r(propagated)  # (B, R, D)
        # batch norm over channels, statistics pooled over images and regions
        normed = self.bn(projected.reshape(-1, projected.shape[-1])).reshape(projected.shape)
        return normed + regions


class RegionReasoning(nn.Module):
    """A stack of :class:`RegionGCN` layers (VSRN uses four): ``(B, R, D) -> (B, R, D)``."""

    def __init__(self, dim: int, *, layers: int, inter_dim: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList(RegionGCN(dim, inter_dim=inter_dim) for _ in range(layers))

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            regions = layer(regions)
        return regions
