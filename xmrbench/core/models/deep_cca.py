"""Deep CCA (Andrew, Arora, Bilmes, Livescu, ICML 2013) for image-sentence retrieval, the
"Deep CCA" baseline of Yan and Mikolajczyk (CVPR 2015) in the two-branch paper's Table 2.

Two networks, one per modality, are trained so that their outputs on the paired
training items are maximally correlated; retrieval then ranks in the common space of
a linear CCA fitted on those outputs.

Networks: each branch is the two-branch model's (:class:`~xmrbench.core.models.two_branch.Branch`,
its layers without the final L2 normalisation): FC (``hidden_dim``) -> ReLU -> Dropout
-> FC (``embed_dim`` = ``o``, the output size) -> optional BatchNorm. The image branch
reads the recipe's image features, the text branch its tf-idf (or the dataset's own)
sentence vectors.

Training objective: the loss ``dcca`` (``xmrbench/core/losses/dcca.py``), the negated
total canonical correlation of the two branches' outputs over a mini-batch of aligned
(image, caption) pairs, descended by the plain gradient method. In training mode the
encoders return the raw outputs ``H1 (B, o)``, ``H2 (B, o)`` that the loss correlates.

Closed-form final step: correlation is blind to any invertible linear map of either
output, so the outputs themselves are no common space. After each training epoch
(:meth:`after_epoch`, called by the engine before the dev evaluation that selects
the model) the networks' outputs on every (image, caption) pair of the training split
(an image counted once per caption, in eval mode: no dropout, batch-norm running
statistics) are fed to the regularised linear CCA of
:class:`~xmrbench.core.models.cca.CCA` (its solver, ``fit_pairs``), which keeps
``cca_dim`` canonical directions with a ridge of ``cca_reg`` times each covariance's
mean eigenvalue. The fitted projections are buffers of the model, so the best state
the engine keeps holds the common space of its own epoch.

Retrieval (eval mode): both modalities are projected with the fitted CCA, each
canonical component weighted by ``(1 + rho_i) ** cca_power`` (Gong, Ke, Isard and
Lazebnik's normalised CCA, as in the recipe's CCA row; 0: the plain canonical
variates), L2-normalised, and scored by cosine similarity. Yan and Mikolajczyk also
rank by normalised CCA projections of the trained networks' outputs; their exact
weighting is not restated here.

``docs/deep_cca.md`` describes the settings, the batch-size caveat and the recipe row.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.core.models.cca import CCA
from xmrbench.core.models.two_branch import Branch
from xmrbench.errors import ConfigError
from xmrbench.params import Params

_BLOCK = 1024  # items per forward pass when the outputs of the training split are computed


class DeepCCA(RetrievalModel):
    """Two non-linear branches trained by the DCCA objective, then a linear CCA on their outputs."""

    class Params(Params):
        hidden_dim: int = Field(1024, ge=1)  # hidden FC layer of each branch
        embed_dim: int = Field(128, ge=1)  # o: the output size of each branch (the correlated space)
        dropout: float = Field(0.0, ge=0, lt=1)
        batch_norm: bool = False  # batch norm after each branch's last FC layer
        cca_dim: int | None = Field(None, ge=1)  # canonical directions kept for retrieval (None: all o)
        cca_reg: float = Field(1e-3, ge=0)  # ridge of the final CCA, relative to each covariance's mean eigenvalue
        cca_power: float = Field(4.0, ge=0)  # component i weighted by (1 + rho_i) ** p; 0: plain CCA
        image_input: Literal["global", "mean_regions"] = "global"
        text_input: Literal["tfidf", "features"] = "tfidf"

    params: Params

    def __init__(self, params: DeepCCA.Params, dims: InputDims):
        super().__init__(params, dims)
        if dims.text_dim is None:
            raise ConfigError("Deep CCA needs vector text features (model.text_input: tfidf or features)",
                              key="model.text_input")
        k = params.embed_dim if params.cca_dim is None else params.cca_dim
        if k > params.embed_dim:
            raise ConfigError(f"{k} canonical directions asked for, but the branches output {params.embed_dim} "
                              "dimensions (model.embed_dim)", key="model.cca_dim")
        kw = dict(hidden_dim=params.hidden_dim, embed_dim=params.embed_dim, linear=False,
                  dropout=params.dropout, batch_norm=params.batch_norm)
        self.img_branch = Branch(dims.image_dim, **kw)
        self.txt_branch = Branch(dims.text_dim, **kw)
        o = params.embed_dim
        self.cca = CCA(CCA.Params(dim=k, reg=params.cca_reg, power=params.cca_power),
                       InputDims(image_dim=o, vocab_size=0, text_dim=o))

    # the branches' layers without Branch.forward's L2 normalisation: H1, H2
    def image_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, D_x) -> H1 (B, o)``."""
        return self.img_branch.net(images)

    def text_outputs(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors (B, D_y) -> H2 (B, o)``."""
        return self.txt_branch.net(vectors)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Training mode: ``H1 (B, o)``; eval mode: the L2-normalised weighted CCA projection ``(B, k)``."""
        h = self.image_outputs(images)
        return h if self.training else self.cca.encode_images(h).to(h.dtype)

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """Training mode: ``H2 (B, o)``; eval mode: the L2-normalised weighted CCA projection ``(B, k)``."""
        h = self.text_outputs(text.vectors)
        return h if self.training else self.cca.encode_texts(TextBatch(vectors=h)).to(h.dtype)

    @torch.no_grad()
    def after_epoch(self, split: Any) -> None:
        """Fit the linear CCA on the networks' outputs over every (image, caption) pair of the
        prepared training ``split``, computed in eval mode (the mode is restored after)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            caption_image = np.asarray(split.caption_image())
            n_img, n_cap = split.n_images, len(caption_image)
            h_img = torch.cat([self.image_outputs(split.image_batch(np.arange(s, min(s + _BLOCK, n_img))).to(device))
                               for s in range(0, n_img, _BLOCK)])
            h_txt = torch.cat([self.text_outputs(split.text_batch(np.arange(s, min(s + _BLOCK, n_cap))).to(device).vectors)
                               for s in range(0, n_cap, _BLOCK)])
            self.cca.fit_pairs(h_img[torch.as_tensor(caption_image, dtype=torch.long, device=device)], h_txt)
        finally:
            self.train(was_training)
