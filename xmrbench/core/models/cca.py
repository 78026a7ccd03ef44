"""Regularised linear CCA, fitted in closed form (no loss, no gradient steps).

The CCA baselines of the two-branch paper's Tables 2-3 ("CCA (FV HGLMM)", Klein et
al. 2015; Plummer et al. 2015) project image and sentence features with canonical
correlation analysis and rank by the cosine of the projections, weighting each
canonical component in the way of Gong, Ke, Isard and Lazebnik's "properly
normalised" CCA (IJCV 2014).

Fitting, on every (image, caption) training pair (an image with five captions
counts five times):

1. centre both views; covariances ``C_xx (D_x, D_x)``, ``C_yy (D_y, D_y)``,
   ``C_xy (D_x, D_y)`` with the pair count as denominator, accumulated in float64
   in two passes (means first, then centred products);
2. regularise each diagonal block by ``r`` times its mean eigenvalue:
   ``C_xx + r * tr(C_xx) / D_x * I`` (``reg``), so that ``r`` does not depend on
   the scale of the features;
3. whiten with Cholesky factors ``C_xx = L_x L_x^T``, ``C_yy = L_y L_y^T`` and take
   the SVD ``L_x^-1 C_xy L_y^-T = U S V^T``. The singular values are the canonical
   correlations ``rho``; ``W_x = L_x^-T U_k``, ``W_y = L_y^-T V_k`` keep the top
   ``k = dim`` components. This is the generalised eigenproblem
   ``[0 C_xy; C_yx 0] w = rho [C_xx 0; 0 C_yy] w`` solved without ever inverting or
   eigendecomposing an ill-conditioned matrix.

When there are fewer training pairs ``N`` than dimensions in a view (a few hundred
training pairs of 4,096-d image features, say), both covariances have rank at most
``N`` and the same solution is computed in sample space instead, exactly (up to the
sign of each component, which the cosine does not see): with the thin SVD of each
centred view ``Z = U diag(s) V^T``, the regularised covariance is
``V diag(s^2 / N + ridge) V^T + ridge * (I - V V^T)``, so the whitened cross-covariance
``C_xx^-1/2 C_xy C_yy^-1/2 = V_x K V_y^T`` with the small matrix
``K = diag(a_x) U_x^T U_y diag(a_y)``, ``a = s / sqrt(N) / sqrt(s^2 / N + ridge)``. The
SVD ``K = P diag(rho) Q^T`` gives the correlations and
``W_x = V_x diag((s_x^2 / N + ridge)^-1/2) P``, ``W_y`` alike. The cost is
``O(N^2 (D_x + D_y))`` instead of ``O(D_x^3 + D_y^3)``, and no ``(D, D)`` matrix is
formed (:func:`solve_cca_rows`; ``docs/baselines_label.md`` has measured times).

Embedding: ``emb = l2norm(((x - mean) @ W) * (1 + rho) ** p)``. With two views the
generalised eigenvalues of Gong et al.'s ``S W = S_diag W D`` (``S`` the joint
covariance, ``S_diag`` its block diagonal) are ``1 + rho``; scaling by their
``p``-th power (``power``, 4 in Gong et al.; 0 = plain CCA) favours the strongly
correlated directions. Similarity: cosine (dot product of the L2-normalised
embeddings).

Within each view the fitted projections of the training pairs are uncorrelated
with variance 1 (exactly so for ``reg = 0``), and the i-th image and text
projections correlate with ``rho_i``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.core.text.word_features import FisherKind
from xmrbench.errors import ConfigError, TrainingError
from xmrbench.params import Params

_BLOCK_IMAGES = 256  # images per accumulation block during fitting
_SINGULAR = 1e-12  # smallest Cholesky pivot, relative to the mean variance, of a usable covariance


class ProjectionEncoders:
    """The encoders of a fitted linear projection (CCA, CCA-3V): centre with the training
    means (buffers ``mean_img``, ``mean_txt``), project (``proj_img``, ``proj_txt``), weight
    each component by the model's ``_weights()``, L2-normalise."""

    _what = "the CCA model"

    def _check_fitted(self) -> None:
        if not bool(self.fitted):  # type: ignore[attr-defined]
            raise TrainingError(f"{self._what} is used before fit() was called")

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, D_x) -> img_emb (B, k)``, L2-normalised."""
        self._check_fitted()
        proj = (images.to(self.proj_img.dtype) - self.mean_img) @ self.proj_img  # type: ignore[attr-defined]
        return l2norm(proj * self._weights())  # type: ignore[attr-defined]

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """``text.vectors (B, D_y) -> txt_emb (B, k)``, L2-normalised."""
        self._check_fitted()
        proj = (text.vectors.to(self.proj_txt.dtype) - self.mean_txt) @ self.proj_txt  # type: ignore[attr-defined]
        return l2norm(proj * self._weights())  # type: ignore[attr-defined]


class CCA(ProjectionEncoders, RetrievalModel):
    """Regularised linear CCA with Gong et al.'s eigenvalue-power weighting."""

    closed_form = True

    class Params(Params):
        # defaults: best dev rsum over dim {64, 128} x reg {1e-3 .. 1} x power {0, 4} on the small synthetic world
        dim: int = Field(64, ge=1)  # canonical components kept (k)
        reg: float = Field(1e-2, ge=0)  # r: ridge on each covariance, relative to its mean eigenvalue
        power: float = Field(4.0, ge=0)  # p: component i weighted by (1 + rho_i) ** p; 0 = plain CCA
        image_input: Literal["global", "mean_regions"] = "global"
        # features: the dataset's own text vectors; mean_wordvec, fisher[:OPTIONS]: sentence vectors of
        # data.word_vectors (xmrbench/core/text/word_features.py)
        text_input: Literal["tfidf", "features", "mean_wordvec"] | FisherKind = "tfidf"

    def __init__(self, params: CCA.Params, dims: InputDims):
        super().__init__(params, dims)
        if dims.text_dim is None:
            raise ConfigError("CCA needs vector text features (model.text_input: tfidf, features, mean_wordvec or fisher)",
                              key="model.text_input")
        limit = min(dims.image_dim, dims.text_dim)
        if params.dim > limit:
            raise ConfigError(
                f"{params.dim} canonical components asked for, but the image features have {dims.image_dim} "
                f"and the text features {dims.text_dim} dimensions (at most {limit})",
                key="model.dim",
            )
        k = params.dim
        self.register_buffer("mean_img", torch.zeros(dims.image_dim))
        self.register_buffer("mean_txt", torch.zeros(dims.text_dim))
        self.register_buffer("proj_img", torch.zeros(dims.image_dim, k))
        self.register_buffer("proj_txt", torch.zeros(dims.text_dim, k))
        self.register_buffer("correlations", torch.zeros(k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # -- fitting ---------------------------------------------------------------------

    @torch.no_grad()
    def fit(self, split) -> None:
        """Fit on every (image, caption) pair of ``split`` (a prepared training split);
        in sample space when there are fewer pairs than dimensions in a view."""
        if use_sample_space(len(split.caption_image()), [self.dims.image_dim, self.dims.text_dim]):
            self.fit_pairs(*_pair_rows(split))
        else:
            self._store(*_pair_covariances(split))

    @torch.no_grad()
    def fit_pairs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fit on aligned pairs: row ``i`` of ``x (N, D_x)`` with row ``i`` of ``y (N, D_y)``
        (region-phrase pairs, say)."""
        if len(x) != len(y) or not len(x):
            raise TrainingError(f"CCA needs aligned pairs: got {len(x)} image and {len(y)} text rows")
        x, y = x.double().cpu(), y.double().cpu()
        mean_x, mean_y = x.mean(0), y.mean(0)
        xc, yc = x - mean_x, y - mean_y
        if use_sample_space(len(x), [x.shape[1], y.shape[1]]):
            self._keep(mean_x, mean_y, *solve_cca_rows(xc, yc, dim=self.params.dim, reg=self.params.reg))
            return
        n = len(x)
        self._store(mean_x, mean_y, xc.t() @ xc / n, yc.t() @ yc / n, xc.t() @ yc / n)

    def _store(self, mean_x: torch.Tensor, mean_y: torch.Tensor, c_xx: torch.Tensor, c_yy: torch.Tensor,
               c_xy: torch.Tensor) -> None:
        """Solve CCA from the pairs' means and covariances and keep the projections."""
        self._keep(mean_x, mean_y, *solve_cca(c_xx, c_yy, c_xy, dim=self.params.dim, reg=self.params.reg))

    def _keep(self, mean_x: torch.Tensor, mean_y: torch.Tensor, w_x: torch.Tensor, w_y: torch.Tensor,
              rho: torch.Tensor) -> None:
        device = self.proj_img.device
        self.mean_img.copy_(mean_x.to(device))
        self.mean_txt.copy_(mean_y.to(device))
        self.proj_img.copy_(w_x.to(device))
        self.proj_txt.copy_(w_y.to(device))
        self.correlations.copy_(rho.to(device))
        self.fitted.fill_(True)

    # -- encoding --------------------------------------------------------------------

    def _weights(self) -> torch.Tensor:
        return (1.0 + self.correlations) ** self.params.power



def _caption_blocks(split):
    """Blocks of images with their captions: ``(image index, caption index, local image of each caption)``."""
    caption_image = np.asarray(split.caption_image())
    order = np.argsort(caption_image, kind="stable")
    sorted_images = caption_image[order]
    for start in range(0, split.n_images, _BLOCK_IMAGES):
        stop = min(start + _BLOCK_IMAGES, split.n_images)
        lo, hi = np.searchsorted(sorted_images, [start, stop])
        captions = order[lo:hi]
        yield np.arange(start, stop), captions, torch.from_numpy(caption_image[captions] - start)


def _pair_rows(split) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, caption) pair of ``split`` as aligned rows ``x (N, D_x)``, ``y (N, D_y)``
    (float64; an image with five captions is five rows)."""
    xs, ys = [], []
    for images, captions, local in _caption_blocks(split):
        xs.append(split.image_batch(images).double()[local])
        ys.append(split.text_batch(captions).vectors.double())
    if not xs or not sum(len(y) for y in ys):
        raise TrainingError(f"split {split.name!r} has no (image, caption) pairs to fit CCA on")
    return torch.cat(xs), torch.cat(ys)


def _pair_covariances(split):
    """Means ``(D_x,)``, ``(D_y,)`` and covariances ``C_xx``, ``C_yy``, ``C_xy`` (float64)
    over every (image, caption) pair of ``split``, in two passes over the data."""
    n_pairs = 0
    sum_x = sum_y = None
    for images, captions, local in _caption_blocks(split):
        x = split.image_batch(images).double()
        y = split.text_batch(captions).vectors.double()
        counts = torch.bincount(local, minlength=len(images)).double()
        sum_x = (counts @ x) if sum_x is None else sum_x + counts @ x
        sum_y = y.sum(0) if sum_y is None else sum_y + y.sum(0)
        n_pairs += len(captions)
    if not n_pairs:
        raise TrainingError(f"split {split.name!r} has no (image, caption) pairs to fit CCA on")
    mean_x, mean_y = sum_x / n_pairs, sum_y / n_pairs
    c_xx = torch.zeros(len(mean_x), len(mean_x), dtype=torch.float64)
    c_yy = torch.zeros(len(mean_y), len(mean_y), dtype=torch.float64)
    c_xy = torch.zeros(len(mean_x), len(mean_y), dtype=torch.float64)
    for images, captions, local in _caption_blocks(split):
        x = split.image_batch(images).double() - mean_x
        y = split.text_batch(captions).vectors.double() - mean_y
        counts = torch.bincount(local, minlength=len(images)).double()
        c_xx.addmm_(x.t(), x * counts[:, None])  # in place: no (D, D) temporaries
        c_yy.addmm_(y.t(), y)
        y_per_image = torch.zeros(len(images), y.shape[1], dtype=torch.float64).index_add_(0, local, y)
        c_xy.addmm_(x.t(), y_per_image)
    return mean_x, mean_y, c_xx / n_pairs, c_yy / n_pairs, c_xy / n_pairs


def _regularised_cholesky(cov: torch.Tensor, reg: float, view: str) -> torch.Tensor:
    """Lower Cholesky factor of ``cov + reg * tr(cov) / D * I``; a clear error if it is singular."""
    dim = cov.shape[0]
    scale = float(torch.trace(cov)) / dim
    if scale <= 0:
        raise TrainingError(f"the {view} features have zero variance over the training pairs; CCA cannot be fitted")
    ridge = torch.eye(dim, dtype=cov.dtype) * (reg * scale)
    factor, info = torch.linalg.cholesky_ex(cov + ridge)
    # a pivot at rounding level means a (numerically) singular covariance: its inverse
    # square root would amplify noise by ~1e8 or more
    if int(info) != 0 or float(torch.diagonal(factor).min()) ** 2 <= _SINGULAR * scale:
        raise TrainingError(
            f"the covariance of the {view} features is singular (rank-deficient features); "
            f"raise model.reg above {reg}"
        )
    return factor


def solve_cca(
    c_xx: torch.Tensor, c_yy: torch.Tensor, c_xy: torch.Tensor, *, dim: int, reg: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``dim`` canonical directions from covariances (float64).

    ``c_xx (D_x, D_x)``, ``c_yy (D_y, D_y)``, ``c_xy (D_x, D_y)`` -> ``W_x (D_x, k)``,
    ``W_y (D_y, k)`` and the canonical correlations ``rho (k,)`` in decreasing order.
    """
    l_x = _regularised_cholesky(c_xx, reg, "image")
    l_y = _regularised_cholesky(c_yy, reg, "text")
    left = torch.linalg.solve_triangular(l_x, c_xy, upper=False)  # L_x^-1 C_xy
    whitened = torch.linalg.solve_triangular(l_y, left.t(), upper=False).t()  # L_x^-1 C_xy L_y^-T
    u, s, vh = torch.linalg.svd(whitened, full_matrices=False)
    w_x = torch.linalg.solve_triangular(l_x.t(), u[:, :dim], upper=True)
    w_y = torch.linalg.solve_triangular(l_y.t(), vh[:dim].t(), upper=True)
    return w_x, w_y, s[:dim]


def use_sample_space(n_rows: int, sizes: list[int]) -> bool:
    """Whether to solve in sample space: a view has more dimensions than there are rows
    (its covariance is then of rank at most ``n_rows``, and the sample-space solution is
    the cheaper one)."""
    return 0 < n_rows < max(sizes)


def sample_whitening(z: torch.Tensor, reg: float, view: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whitening of one centred view ``z (N, D)`` (float64) in sample space.

    With the thin SVD ``z = U diag(s) V^T`` (``r = min(N, D)`` components) and
    ``ridge = reg * tr(C) / D`` for ``C = z^T z / N``, returns ``U (N, r)``,
    ``a = s / sqrt(N) * (s^2 / N + ridge)^-1/2 (r,)`` (the whitened view's singular values
    over ``sqrt(N)``), ``V (D, r)`` and ``e = (s^2 / N + ridge)^-1/2 (r,)``:
    ``(C + ridge I)^-1/2 z^T / sqrt(N) = V diag(a) U^T``. The same errors as the
    covariance route on a constant or (numerically) singular view.
    """
    n, dim = z.shape
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    var = s * s / n  # the covariance's non-zero eigenvalues (and zeros when N < D)
    scale = float(var.sum()) / dim
    if scale <= 0:
        raise TrainingError(f"the {view} features have zero variance over the training pairs; CCA cannot be fitted")
    ridge = reg * scale
    smallest = ridge + (float(var.min()) if len(var) == dim else 0.0)
    if smallest <= _SINGULAR * scale:
        raise TrainingError(
            f"the covariance of the {view} features is singular (rank-deficient features); "
            f"raise model.reg above {reg}"
        )
    e = (var + ridge).rsqrt()
    return u, s / math.sqrt(n) * e, vh.t(), e


def solve_cca_rows(
    xc: torch.Tensor, yc: torch.Tensor, *, dim: int, reg: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`solve_cca` from the centred aligned rows ``xc (N, D_x)``, ``yc (N, D_y)``
    (float64) in sample space (module docstring): the same ``W_x``, ``W_y``, ``rho`` up
    to the sign of each component, without forming a ``(D, D)`` matrix. When ``dim``
    exceeds the rank a sample-space solution has, the covariances are formed and solved
    as usual."""
    n = len(xc)
    if dim > min(n, xc.shape[1], yc.shape[1]):
        return solve_cca(xc.t() @ xc / n, yc.t() @ yc / n, xc.t() @ yc / n, dim=dim, reg=reg)
    u_x, a_x, v_x, e_x = sample_whitening(xc, reg, "image")
    u_y, a_y, v_y, e_y = sample_whitening(yc, reg, "text")
    small = a_x[:, None] * (u_x.t() @ u_y) * a_y[None, :]
    p, rho, qh = torch.linalg.svd(small, full_matrices=False)
    w_x = v_x @ (e_x[:, None] * p[:, :dim])
    w_y = v_y @ (e_y[:, None] * qh[:dim].t())
    return w_x, w_y, rho[:dim]
