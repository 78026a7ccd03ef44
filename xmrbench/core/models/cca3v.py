"""Three-view CCA (CCA-3V) of Gong, Ke, Isard and Lazebnik ("A multi-view embedding
space for modeling internet images, tags, and their semantics", IJCV 2014), fitted in
closed form, as ACMR's Table 2 compares against it.

The three views of one training pair are its image feature ``x (D_x,)``, its text
feature ``y (D_y,)`` and its semantics ``z (C,)``: the class labels as an indicator
vector (one-hot for one class per image, the multi-hot row as given otherwise; Gong et
al.'s "ground-truth semantic" view). Only the image and text projections are used for
retrieval: the label view shapes the space during fitting and is then dropped.

Fitting, on every (image, text) training pair, each with its image's labels:

1. centre the three views; joint covariance ``S`` of ``[x, y, z]`` with blocks
   ``S_ij`` (pair count as denominator, float64, two passes);
2. regularise each diagonal block by ``r`` times its mean eigenvalue,
   ``S_ii + r * tr(S_ii) / D_i * I`` (``reg``), in ``S`` and in its block diagonal
   ``S_diag`` alike, as Gong et al. do (their code adds a fixed ``1e-4``; a relative
   ridge keeps ``r`` independent of the feature scale, as in :mod:`cca`);
3. solve the generalised eigenproblem ``S W = S_diag W D`` stably: with Cholesky
   factors ``S_ii = L_i L_i^T`` the whitened matrix ``M = L^-1 S L^-T`` has identity
   diagonal blocks and off-diagonal blocks ``L_i^-1 S_ij L_j^-T``; its symmetric
   eigendecomposition ``M = V D V^T`` gives ``W = L^-T V`` (triangular solves only, no
   inverse is ever formed). The top ``k = dim`` eigenvalues ``d_1 >= ... >= d_k`` and
   the image and text blocks ``W_x (D_x, k)``, ``W_y (D_y, k)`` of their eigenvectors
   are kept. The eigenvectors are normalised jointly, ``W^T S_diag W = I`` (the
   normalisation of a symmetric-definite generalised eigensolver, and of Gong et al.'s
   code): the blocks are not rescaled view by view. With fewer pairs than dimensions
   in a view the same solution comes from the pair rows in sample space
   (:func:`solve_multiview_cca_rows`), without a ``(D, D)`` matrix.

Embedding (Gong et al.'s scaled projection): ``emb = l2norm(((x - mean) @ W) * d ** p)``
with ``p = power`` (4 in Gong et al.; 0 = unweighted). Similarity: cosine, as in
:mod:`cca`.

With two views the eigenvalues are ``1 + rho`` (``rho`` the canonical correlations)
and ``W_x`` is the two-view CCA direction divided by ``sqrt(2)``, the same for every
component, so the embedding equals :class:`~xmrbench.core.models.cca.CCA`'s up to the
sign of each component (:meth:`CCA3V.fit_views` with no labels fits that case). With
three views the eigenvalues lie in ``[0, 3]``; at most ``D - max_i D_i`` of them exceed
1 (``D`` the summed view sizes), which bounds ``dim``. The choices Gong et al. leave
open are listed in ``docs/baselines_label.md``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.linalg
import torch
from pydantic import Field

from xmrbench.core.models.base import InputDims, RetrievalModel
from xmrbench.core.models.cca import (
    ProjectionEncoders,
    _caption_blocks,
    _regularised_cholesky,
    sample_whitening,
    use_sample_space,
)
from xmrbench.errors import ConfigError, DataError, TrainingError
from xmrbench.params import Params


def label_indicators(labels, n_images: int, *, split: str = "train") -> np.ndarray:
    """The semantic view: labels as a ``(N, C)`` float64 indicator matrix.

    ``labels`` is one integer class per image ``(N,)`` (one-hot over the classes that
    occur) or a multi-hot ``(N, C)`` 0/1 matrix (columns that are constant over the
    split are dropped: they carry no variance). Raises ``DataError`` on a wrong length,
    non-integer classes, values other than 0/1, or fewer than two classes left.
    """
    arr = np.asarray(labels)
    if arr.ndim not in (1, 2) or len(arr) != n_images:
        raise DataError(f"split {split!r}: labels of shape {arr.shape} do not give one class id or one multi-hot row "
                        f"for each of its {n_images} images")
    if arr.ndim == 1:
        if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
            raise DataError(f"split {split!r}: single-label classes must be integers, got dtype {arr.dtype}")
        classes, index = np.unique(arr, return_inverse=True)
        if len(classes) < 2:
            raise DataError(f"split {split!r}: every image has the same class; CCA-3V's label view needs two or more")
        out = np.zeros((n_images, len(classes)), dtype=np.float64)
        out[np.arange(n_images), index.reshape(-1)] = 1.0
        return out
    out = arr.astype(np.float64)
    if not np.isin(out, (0.0, 1.0)).all():
        raise DataError(f"split {split!r}: multi-hot labels must hold only 0 and 1")
    out = out[:, out.min(0) != out.max(0)] if len(out) else out
    if out.shape[1] == 0:
        raise DataError(f"split {split!r}: every multi-hot label column is constant over the split; CCA-3V's label "
                        "view needs one that varies")
    return out


def _stacked_rows(split, indicators: np.ndarray | None):
    """A function of a caption block giving its pairs' stacked views ``[x, y(, z)]``
    (float64 rows); a caption's ``z`` is its image's row."""

    def rows(images, captions, local):
        x = split.image_batch(images).double()[local]
        y = split.text_batch(captions).vectors.double()
        parts = [x, y]
        if indicators is not None:
            parts.append(torch.from_numpy(indicators[images]).double()[local])
        return torch.cat(parts, 1)

    return rows


def _view_rows(split, indicators: np.ndarray | None):
    """Mean ``(D,)`` and the centred stacked views ``(N, D)`` of every pair (float64)."""
    rows = _stacked_rows(split, indicators)
    blocks = [rows(*block) for block in _caption_blocks(split)]
    if not blocks or not sum(len(b) for b in blocks):
        raise TrainingError(f"split {split.name!r} has no (image, caption) pairs to fit CCA-3V on")
    stacked = torch.cat(blocks)
    mean = stacked.mean(0)
    return mean, stacked - mean


def _view_covariances(split, indicators: np.ndarray | None):
    """Mean ``(D,)`` and covariance ``(D, D)`` (float64) of the stacked views ``[x, y(, z)]``
    over every (image, caption) pair of ``split``; a caption's ``z`` is its image's row."""
    rows = _stacked_rows(split, indicators)
    n_pairs, total = 0, None
    for images, captions, local in _caption_blocks(split):
        block = rows(images, captions, local)
        total = block.sum(0) if total is None else total + block.sum(0)
        n_pairs += len(captions)
    if not n_pairs:
        raise TrainingError(f"split {split.name!r} has no (image, caption) pairs to fit CCA-3V on")
    mean = total / n_pairs
    cov = torch.zeros(len(mean), len(mean), dtype=torch.float64)
    for images, captions, local in _caption_blocks(split):
        block = rows(images, captions, local) - mean
        cov.addmm_(block.t(), block)
    return mean, cov / n_pairs


def solve_multiview_cca(
    cov: torch.Tensor, sizes: list[int], *, dim: int, reg: float, views: list[str] | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Top-``dim`` solutions of ``S W = S_diag W D`` for a joint covariance (float64).

    ``cov (D, D)`` is the covariance of the stacked views, whose sizes are ``sizes``
    (summing to ``D``); ``views`` names them for error messages. Returns the blocks
    ``W_i (D_i, k)`` of the eigenvectors (normalised so that ``W^T S_diag W = I``, with
    the regularised ``S_diag``) and the eigenvalues ``d (k,)`` in decreasing order.
    Raises ``ConfigError`` when ``dim`` exceeds the number of eigenvalues that can exceed
    1 (``D - max(sizes)``) and ``TrainingError`` on a singular or constant view.
    """
    names = views or [f"view {i + 1}" for i in range(len(sizes))]
    if sum(sizes) != cov.shape[0] or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"view sizes {sizes} do not match a covariance of shape {tuple(cov.shape)}")
    _check_dim(dim, sizes)
    blocks = _blocks(sizes)
    factors = [_regularised_cholesky(cov[b, b], reg, name) for b, name in zip(blocks, names)]
    whitened = torch.eye(cov.shape[0], dtype=cov.dtype)  # diagonal blocks: L_i^-1 (S_ii + ridge) L_i^-T = I
    for i, (bi, li) in enumerate(zip(blocks, factors)):
        for j in range(i + 1, len(blocks)):
            bj, lj = blocks[j], factors[j]
            left = torch.linalg.solve_triangular(li, cov[bi, bj], upper=False)  # L_i^-1 S_ij
            off = torch.linalg.solve_triangular(lj, left.t(), upper=False).t()  # L_i^-1 S_ij L_j^-T
            whitened[bi, bj] = off
            whitened[bj, bi] = off.t()
    values, vectors = _top_eigh(whitened, dim)
    projections = [torch.linalg.solve_triangular(li.t(), vectors[b], upper=True) for b, li in zip(blocks, factors)]
    return projections, values


def solve_multiview_cca_rows(
    centred: torch.Tensor, sizes: list[int], *, dim: int, reg: float, views: list[str] | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`solve_multiview_cca` from the centred stacked views ``centred (N, D)`` in sample
    space, for fewer rows than dimensions: the same projections (up to the sign of each
    component) and eigenvalues, without a ``(D, D)`` matrix.

    With each view whitened in sample space (:func:`~xmrbench.core.models.cca.sample_whitening`,
    ``Z_i^T / sqrt(N)`` whitened ``= V_i diag(a_i) U_i^T``), the whitened joint covariance is
    ``I + V (K - I) V^T`` with ``V`` the block diagonal of the ``V_i`` (orthonormal columns)
    and ``K`` the small symmetric matrix with identity diagonal blocks and off-diagonal
    blocks ``diag(a_i) U_i^T U_j diag(a_j)``. Its eigenvalues other than 1 are those of
    ``K``, with eigenvectors ``V q``; ``W_i = V_i diag(e_i) q_i``. When ``dim`` exceeds the
    eigenvalues ``K`` can hold above 1, the covariance is formed and solved as usual.
    """
    names = views or [f"view {i + 1}" for i in range(len(sizes))]
    if sum(sizes) != centred.shape[1]:
        raise ValueError(f"view sizes {sizes} do not match rows of width {centred.shape[1]}")
    _check_dim(dim, sizes)
    n = len(centred)
    ranks = [min(n, d) for d in sizes]
    if dim > sum(ranks) - max(ranks):
        return solve_multiview_cca(centred.t() @ centred / n, sizes, dim=dim, reg=reg, views=views)
    parts = [sample_whitening(centred[:, b], reg, name) for b, name in zip(_blocks(sizes), names)]
    small_blocks = _blocks(ranks)
    small = torch.eye(sum(ranks), dtype=centred.dtype)
    for i, (u_i, a_i, _, _) in enumerate(parts):
        for j in range(i + 1, len(parts)):
            u_j, a_j = parts[j][0], parts[j][1]
            off = a_i[:, None] * (u_i.t() @ u_j) * a_j[None, :]
            small[small_blocks[i], small_blocks[j]] = off
            small[small_blocks[j], small_blocks[i]] = off.t()
    values, vectors = _top_eigh(small, dim)
    projections = [v_i @ (e_i[:, None] * vectors[b]) for (_, _, v_i, e_i), b in zip(parts, small_blocks)]
    return projections, values


def _check_dim(dim: int, sizes: list[int]) -> None:
    limit = sum(sizes) - max(sizes)
    if dim > limit:
        raise ConfigError(f"{dim} components asked for, but views of sizes {sizes} have at most {limit} "
                          "correlated directions", key="model.dim")


def _blocks(sizes: list[int]) -> list[slice]:
    bounds = np.cumsum([0, *sizes])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _top_eigh(sym: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``dim`` eigenpairs of a symmetric matrix, in decreasing order."""
    # only the top dim eigenpairs (ascending from LAPACK, reversed here): about half the
    # time of a full decomposition on the ~7,000-dimensional problems of ACMR's datasets
    n = sym.shape[0]
    values_np, vectors_np = scipy.linalg.eigh(sym.numpy(), subset_by_index=[n - dim, n - 1])
    values = torch.from_numpy(np.ascontiguousarray(values_np[::-1]))
    vectors = torch.from_numpy(np.ascontiguousarray(vectors_np[:, ::-1]))
    return values, vectors


class CCA3V(ProjectionEncoders, RetrievalModel):
    """Three-view CCA (image, text, labels) with Gong et al.'s eigenvalue-power weighting."""

    closed_form = True
    _what = "the CCA-3V model"

    class Params(Params):
        dim: int = Field(64, ge=1)  # k: components kept (at most D_x + D_y + C - max of the three)
        reg: float = Field(1e-2, ge=0)  # r: ridge on each view's covariance, relative to its mean eigenvalue
        power: float = Field(4.0, ge=0)  # p: component i weighted by d_i ** p; 0 = unweighted
        image_input: Literal["global", "mean_regions"] = "global"
        text_input: Literal["tfidf", "features"] = "features"  # features: the dataset's own text vectors

    def __init__(self, params: CCA3V.Params, dims: InputDims):
        super().__init__(params, dims)
        if dims.text_dim is None:
            raise ConfigError("CCA-3V needs vector text features (model.text_input: features or tfidf)",
                              key="model.text_input")
        if params.dim > dims.image_dim + dims.text_dim:
            raise ConfigError(f"{params.dim} components asked for, but the image features have {dims.image_dim} "
                              f"and the text features {dims.text_dim} dimensions", key="model.dim")
        k = params.dim
        self.register_buffer("mean_img", torch.zeros(dims.image_dim))
        self.register_buffer("mean_txt", torch.zeros(dims.text_dim))
        self.register_buffer("proj_img", torch.zeros(dims.image_dim, k))
        self.register_buffer("proj_txt", torch.zeros(dims.text_dim, k))
        self.register_buffer("eigenvalues", torch.zeros(k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # -- fitting ---------------------------------------------------------------------

    def fit(self, split) -> None:
        """Fit on every (image, caption) pair of the prepared training ``split`` and its
        images' labels (``split.split.extras["labels"]``)."""
        labels = split.split.extras.get("labels")
        if labels is None:
            raise DataError(f"split {split.name!r} has no labels (extras 'labels'); CCA-3V's third view needs them")
        self.fit_views(split, label_indicators(labels, split.n_images, split=split.name))

    @torch.no_grad()
    def fit_views(self, split, indicators: np.ndarray | None) -> None:
        """Fit on ``split`` with the label view ``indicators (N_images, C)``, or on the
        image and text views alone when ``indicators`` is None (two-view CCA)."""
        sizes = [self.dims.image_dim, self.dims.text_dim]
        views = ["image", "text"]
        if indicators is not None:
            sizes.append(indicators.shape[1])
            views.append("label")
        if use_sample_space(len(split.caption_image()), sizes):
            mean, centred = _view_rows(split, indicators)
            (w_x, w_y, *_), values = solve_multiview_cca_rows(centred, sizes, dim=self.params.dim,
                                                              reg=self.params.reg, views=views)
        else:
            mean, cov = _view_covariances(split, indicators)
            (w_x, w_y, *_), values = solve_multiview_cca(cov, sizes, dim=self.params.dim, reg=self.params.reg,
                                                         views=views)
        dx, dy = sizes[0], sizes[1]
        device = self.proj_img.device
        self.mean_img.copy_(mean[:dx].to(device))
        self.mean_txt.copy_(mean[dx:dx + dy].to(device))
        self.proj_img.copy_(w_x.to(device))
        self.proj_txt.copy_(w_y.to(device))
        self.eigenvalues.copy_(values.to(device))
        self.fitted.fill_(True)

    # -- encoding --------------------------------------------------------------------

    def _weights(self) -> torch.Tensor:
        # eigenvalues are >= 0 up to rounding; a clamp keeps a fractional power real
        return self.eigenvalues.clamp_min(0.0) ** self.params.power

