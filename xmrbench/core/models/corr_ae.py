"""The correspondence autoencoder (Corr-AE) of Feng, Wang and Li ("Cross-modal retrieval
with correspondence autoencoder", ACM MM 2014), the basic model, as ACMR's Tables 2-3
compare against it.

Two autoencoders, one per modality, whose code layers are tied by a distance term.
For an image feature ``x`` and its text feature ``y`` (both scaled, see below)::

    h_x = f(x) = sigmoid(W_x x + b_x)        x_hat = W'_x h_x + b'_x
    h_y = g(y) = sigmoid(W_y y + b_y)        y_hat = W'_y h_y + b'_y

    L_I = ||x - x_hat||^2     L_T = ||y - y_hat||^2     L_C = ||h_x - h_y||^2
    L   = (1 - alpha) * (L_I + L_T) + alpha * L_C

averaged over the training pairs of a batch (:meth:`CorrAE.objective`). ``alpha`` is
the weight of the correlation term, as in the paper's objective and in the released
training scripts (the code layers' tie weight is ``alpha``, the reconstruction layers'
weight ``1 - alpha``), whose selection for the basic Corr-AE, 0.8, is the default.
``alpha = 0`` trains two independent autoencoders, ``alpha = 1`` only pulls the codes
together (a collapsed constant code minimises it).

``hidden_dims`` (default none) puts sigmoid layers between input and code, mirrored
in the decoder. The released models feed the autoencoders with 1,024-unit
representations of stacked RBMs pretrained per modality, with 1,024 code units
(``code_dim``); xmrbench trains the autoencoders on the features themselves, without
RBM pretraining, and its decoders end with a linear layer (the features are
real-valued), where the released model reconstructs sigmoid RBM activations. The
facts about the released code, and every choice made here, are in
``docs/baselines_label.md``.

Input scaling (``input_scaling``, fitted on the training split by
``prepare_training``): ``view`` (default) centres each modality and divides it by one
scale, the root of its mean per-dimension variance, so that the squared reconstruction
errors of both modalities are on the scale of their dimensions whatever the feature
units; ``feature`` standardises every dimension; ``none`` uses the raw features. Note
that ``L_I`` and ``L_T`` sum over the input dimensions while ``L_C`` sums over the code
units, so the balance ``alpha`` strikes depends on the feature sizes; tune it on dev.

Ranking (``similarity``): ``cosine`` (default) of the codes, as the released
evaluation scripts rank; the squared distance of the training objective shrinks the
codes' spread as well as their differences, so a length-free score is the safer one
for retrieval. ``euclidean`` scores by the negated Euclidean distance of the codes, the
quantity ``L_C`` minimises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.errors import ConfigError, TrainingError
from xmrbench.params import Params

_BLOCK = 1024  # items per block when computing the input statistics
_CONSTANT = 1e-12  # a variance at or below this (relative to the largest) counts as a constant feature


@dataclass
class CorrAETerms:
    """One batch's objective: ``recon_img`` (``L_I``), ``recon_txt`` (``L_T``) and ``corr``
    (``L_C``), each averaged over the batch's pairs (0-d), and ``total`` = ``L``."""

    recon_img: torch.Tensor
    recon_txt: torch.Tensor
    corr: torch.Tensor
    total: torch.Tensor


def _stack(sizes: list[int], *, last_activation: bool) -> nn.Sequential:
    """Linear layers through ``sizes``, a sigmoid after each (after the last one too if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


class CorrAE(RetrievalModel):
    """Two autoencoders with tied codes; retrieval in the code space."""

    class Params(Params):
        code_dim: int = Field(1024, ge=1)  # code units per modality (the released configuration's 1,024)
        hidden_dims: tuple[int, ...] = ()  # sigmoid layers between input and code (mirrored in the decoder)
        alpha: float = Field(0.8, ge=0, le=1)  # weight of L_C; the reconstruction terms get 1 - alpha
        similarity: Literal["cosine", "euclidean"] = "cosine"  # ranking score of two codes
        input_scaling: Literal["view", "feature", "none"] = "view"
        image_input: Literal["global", "mean_regions"] = "global"
        text_input: Literal["tfidf", "features"] = "features"  # features: the dataset's own text vectors

    params: Params

    def __init__(self, params: CorrAE.Params, dims: InputDims):
        super().__init__(params, dims)
        if dims.text_dim is None:
            raise ConfigError("Corr-AE needs vector text features (model.text_input: features or tfidf)",
                              key="model.text_input")
        if any(h < 1 for h in params.hidden_dims):
            raise ConfigError(f"every hidden layer needs at least one unit, got {list(params.hidden_dims)}",
                              key="model.hidden_dims")
        inner = [*params.hidden_dims, params.code_dim]
        self.img_encoder = _stack([dims.image_dim, *inner], last_activation=True)
        self.txt_encoder = _stack([dims.text_dim, *inner], last_activation=True)
        self.img_decoder = _stack([*inner[::-1], dims.image_dim], last_activation=False)
        self.txt_decoder = _stack([*inner[::-1], dims.text_dim], last_activation=False)
        # input scaling (identity until prepare_training fits it)
        self.register_buffer("img_mean", torch.zeros(dims.image_dim))
        self.register_buffer("img_scale", torch.ones(dims.image_dim))
        self.register_buffer("txt_mean", torch.zeros(dims.text_dim))
        self.register_buffer("txt_scale", torch.ones(dims.text_dim))

    # -- input scaling -----------------------------------------------------------------

    @torch.no_grad()
    def prepare_training(self, split) -> None:
        """Fit the input scaling on the prepared training ``split``: every image once,
        every caption once."""
        mode = self.params.input_scaling
        if mode == "none":
            return
        img_mean, img_var = _moments(lambda idx: split.image_batch(idx), split.n_images, "image", split.name)
        txt_mean, txt_var = _moments(lambda idx: split.text_batch(idx).vectors, len(split.caption_image()),
                                     "text", split.name)
        for mean, var, mean_buf, scale_buf in ((img_mean, img_var, self.img_mean, self.img_scale),
                                               (txt_mean, txt_var, self.txt_mean, self.txt_scale)):
            if mode == "view":
                scale = torch.full_like(var, float(var.mean()) ** 0.5)
            else:  # feature: a constant feature keeps scale 1 (it is 0 after centring)
                scale = torch.where(var > _CONSTANT * float(var.max()), var.sqrt(), torch.ones_like(var))
            mean_buf.copy_(mean.to(mean_buf))
            scale_buf.copy_(scale.to(scale_buf))

    def _scaled_images(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.img_mean.dtype) - self.img_mean) / self.img_scale

    def _scaled_texts(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors.to(self.txt_mean.dtype) - self.txt_mean) / self.txt_scale

    # -- codes and objective -----------------------------------------------------------

    def image_codes(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, D_x) -> h_x (B, code_dim)`` in (0, 1)."""
        return self.img_encoder(self._scaled_images(images))

    def text_codes(self, text: TextBatch) -> torch.Tensor:
        """``text.vectors (B, D_y) -> h_y (B, code_dim)`` in (0, 1)."""
        if text.vectors is None:
            raise TrainingError("Corr-AE encodes texts given as vectors, not as token ids")
        return self.txt_encoder(self._scaled_texts(text.vectors))

    def objective(self, images: torch.Tensor, text: TextBatch, pair_image: torch.Tensor) -> CorrAETerms:
        """The Corr-AE objective of a batch: ``images (B_img, D_x)``, ``text`` with
        ``vectors (P, D_y)``, and ``pair_image (P,)``, the row of ``images`` each text
        belongs to (``TrainBatch.labels[1]``); one term per (image, text) pair."""
        x = self._scaled_images(images)
        y = self._scaled_texts(text.vectors)
        h_x, h_y = self.img_encoder(x), self.txt_encoder(y)
        recon_img = ((self.img_decoder(h_x) - x) ** 2).sum(1)[pair_image].mean()
        recon_txt = ((self.txt_decoder(h_y) - y) ** 2).sum(1).mean()
        corr = ((h_x[pair_image] - h_y) ** 2).sum(1).mean()
        alpha = self.params.alpha
        total = (1.0 - alpha) * (recon_img + recon_txt) + alpha * corr
        return CorrAETerms(recon_img, recon_txt, corr, total)

    # -- retrieval ---------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, D_x) -> img_emb (B, code_dim)``: the codes, L2-normalised for cosine."""
        codes = self.image_codes(images)
        return l2norm(codes) if self.params.similarity == "cosine" else codes

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """``text.vectors (B, D_y) -> txt_emb (B, code_dim)``: the codes, L2-normalised for cosine."""
        codes = self.text_codes(text)
        return l2norm(codes) if self.params.similarity == "cosine" else codes

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``sims (N_img, N_txt)``: cosine, or the negated Euclidean distance of the codes."""
        if self.params.similarity == "cosine":
            return img_emb @ txt_emb.t()
        return -torch.cdist(img_emb, txt_emb)

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        if self.params.similarity == "cosine":
            return (img_emb * txt_emb).sum(-1)
        return -(img_emb - txt_emb).norm(dim=-1)


def _moments(batch, n: int, view: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (population) variance, float64, of ``n`` items fetched by
    ``batch(index) -> (B, D)`` in blocks, in two passes."""
    if n == 0:
        raise TrainingError(f"split {split!r} has no {view} features to fit Corr-AE's input scaling on")
    total = None
    for start in range(0, n, _BLOCK):
        block = batch(np.arange(start, min(n, start + _BLOCK))).double()
        total = block.sum(0) if total is None else total + block.sum(0)
    mean = total / n
    square = torch.zeros_like(mean)
    for start in range(0, n, _BLOCK):
        block = batch(np.arange(start, min(n, start + _BLOCK))).double() - mean
        square += (block**2).sum(0)
    var = square / n
    if float(var.max()) <= 0:
        raise TrainingError(f"the {view} features of split {split!r} are constant; Corr-AE cannot scale them")
    return mean, var
