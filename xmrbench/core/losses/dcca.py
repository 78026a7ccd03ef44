"""The Deep CCA objective (Andrew, Arora, Bilmes, Livescu, ICML 2013), as a loss.

Deep CCA trains two networks so that their outputs on paired inputs are maximally
correlated. For a mini-batch of ``m`` aligned pairs with outputs ``H1 (m, o)`` (image
branch) and ``H2 (m, o)`` (text branch):

1. centre both: ``H1 <- H1 - mean(H1)``, ``H2 <- H2 - mean(H2)``;
2. ``S11 = H1^T H1 / (m - 1) + r1 I``, ``S22 = H2^T H2 / (m - 1) + r2 I``,
   ``S12 = H1^T H2 / (m - 1)``;
3. ``T = S11^{-1/2} S12 S22^{-1/2}``; the total correlation is
   ``corr = trace((T^T T)^{1/2})``, the sum of the singular values of ``T`` (the
   canonical correlations of the batch), or of its ``k`` largest with ``k`` set.

The loss is ``-corr``. It is computed in float64 (the inverse square roots of nearly
singular covariances lose float32 precision fast) and is differentiable by autograd:
the inverse square roots come from symmetric eigendecompositions (``torch.linalg.eigh``,
eigenvalues floored at ``eig_floor`` before the power), the singular values from
``torch.linalg.svdvals``, whose gradient is stable even for repeated values. With
``r1 = r2 = 0`` and ``o`` linearly independent columns the value equals the sum of the
canonical correlations of ``H1`` and ``H2``; identical views give ``o``.

Pairs: every positive (image, caption) pair of the batch, as ``labels`` link them
(the training engine's batches: unique images, each caption labelled with its image;
an image with two captions in the batch counts twice, once per pair). ``labels=None``
pairs row ``i`` of ``img_emb`` with row ``i`` of ``txt_emb``. Class labels play no part
and ``sims`` is ignored: the objective reads the two branches' outputs only. There is no
per-pair reduction either (the correlation is a property of the whole batch), so
``reduction`` has no effect. Large batches matter: the covariances are estimated from
the batch alone, and with fewer pairs than ``o`` the correlation of a batch saturates
(every direction can be matched) and says little about the data.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from xmrbench.core.losses.base import Labels, LossParams, RetrievalLoss, positive_mask, positive_pairs


def _inverse_sqrt(cov: Tensor, floor: float) -> Tensor:
    """``cov^{-1/2}`` of a symmetric ``(o, o)`` matrix, eigenvalues floored at ``floor``."""
    values, vectors = torch.linalg.eigh(cov)
    return (vectors * values.clamp_min(floor).rsqrt()) @ vectors.T


def total_correlation(h1: Tensor, h2: Tensor, *, r1: float = 0.0, r2: float = 0.0, k: int | None = None,
                      eig_floor: float = 1e-12) -> Tensor:
    """Sum of the (top ``k``) canonical correlations of ``h1 (m, o1)`` and ``h2 (m, o2)``, a 0-d
    float64 tensor (see the module docstring); differentiable."""
    if h1.dim() != 2 or h2.dim() != 2 or h1.shape[0] != h2.shape[0]:
        raise ValueError(f"Deep CCA needs two (m, o) matrices of aligned rows; got {tuple(h1.shape)} and {tuple(h2.shape)}")
    m = h1.shape[0]
    if m < 2:
        raise ValueError(f"Deep CCA needs at least 2 pairs to estimate a covariance; got {m}")
    h1 = h1.double() - h1.double().mean(0)
    h2 = h2.double() - h2.double().mean(0)
    eye1 = torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    eye2 = torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s11 = h1.T @ h1 / (m - 1) + r1 * eye1
    s22 = h2.T @ h2 / (m - 1) + r2 * eye2
    s12 = h1.T @ h2 / (m - 1)
    t = _inverse_sqrt(s11, eig_floor) @ s12 @ _inverse_sqrt(s22, eig_floor)
    values = torch.linalg.svdvals(t)  # descending
    return values[:k].sum() if k is not None else values.sum()


class DCCALoss(RetrievalLoss):
    """``-corr(H1, H2)``: the negated total canonical correlation of the batch's aligned pairs."""

    class Params(LossParams):
        r1: float = Field(1e-3, ge=0)  # ridge on the image outputs' covariance (absolute, as in Andrew et al.)
        r2: float = Field(1e-3, ge=0)  # ridge on the text outputs' covariance
        k: int | None = Field(None, ge=1)  # correlations summed: the k largest (None: all o)
        eig_floor: float = Field(1e-12, gt=0)  # smallest eigenvalue used in an inverse square root

    params: Params

    def forward(self, img_emb: Tensor, txt_emb: Tensor, *, sims: Tensor | None = None,
                labels: Labels | None = None) -> Tensor:
        """``img_emb (B_img, o)``, ``txt_emb (B_txt, o)`` -> 0-d float64 tensor."""
        rows, cols = positive_pairs(positive_mask(labels, img_emb.shape[0], txt_emb.shape[0], device=img_emb.device))
        p = self.params
        return -total_correlation(img_emb[rows], txt_emb[cols], r1=p.r1, r2=p.r2, k=p.k, eig_floor=p.eig_floor)
