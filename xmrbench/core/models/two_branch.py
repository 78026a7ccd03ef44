"""Two-branch networks (Wang, Li, Lazebnik, TPAMI 2018), Sections 3.2-3.3.

Each branch maps a precomputed feature (image: global CNN feature; text: an
orderless sentence vector, tf-idf here, Fisher vectors in the paper, or a dataset's
own text vectors with ``text_input: features``) through

- non-linear (default): FC -> ReLU -> Dropout -> FC -> BatchNorm -> L2 norm
  ("batch normalization right after the last FC layer (without ReLU)");
- linear variant (``linear: true``): only the first FC layer, immediately followed
  by L2 normalisation (Sec. 4.2, "Linear branch structure").

The *embedding network* scores a pair by the cosine of the two embeddings and is
trained with the bi-directional ranking loss (``loss.name: bidirectional_ranking``,
Eq. 3/6). The *similarity network* fuses the two branch outputs by element-wise
product followed by FC layers (512x512, 512x256, 256x1 in the paper) and is trained
with the logistic loss (``loss.name: logistic``, Eq. 7).

Batch-norm statistics: the paper's retrieval numbers were produced by a MatConvNet
version that used *test-set* batch statistics at evaluation (its footnote 3); we
evaluate in eval mode with the statistics learned during training, the standard
practice the paper itself calls more standard.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.core.text.word_features import FisherKind
from xmrbench.params import Params


class Branch(nn.Module):
    """One branch: ``(B, D_in) -> (B, D_out)`` L2-normalised."""

    def __init__(self, in_dim: int, *, hidden_dim: int, embed_dim: int, linear: bool, dropout: float, batch_norm: bool):
        super().__init__()
        if linear:
            self.net = nn.Linear(in_dim, hidden_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(hidden_dim, embed_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(embed_dim))
            self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm(self.net(x))


class _TwoBranchParams(Params):
    hidden_dim: int = Field(2048, ge=1)  # first FC layer (W1, V1)
    embed_dim: int = Field(512, ge=1)  # second FC layer (W2, V2); the linear variant uses hidden_dim
    linear: bool = False
    dropout: float = Field(0.5, ge=0, lt=1)
    batch_norm: bool = True
    image_input: Literal["global", "mean_regions"] = "global"
    # features: the dataset's own text vectors (labelled sets); mean_wordvec, fisher[:OPTIONS]: word-vector sentence vectors
    text_input: Literal["tfidf", "features", "mean_wordvec"] | FisherKind = "tfidf"


class TwoBranchEmbedding(RetrievalModel):
    """The embedding network: cosine similarity in a learned joint space."""

    class Params(_TwoBranchParams):
        pass

    def __init__(self, params: _TwoBranchParams, dims: InputDims):
        super().__init__(params, dims)
        if dims.text_dim is None:
            raise ValueError("the two-branch networks need vector text features (text_dim)")
        kw = dict(
            hidden_dim=params.hidden_dim,
            embed_dim=params.embed_dim,
            linear=params.linear,
            dropout=params.dropout,
            batch_norm=params.batch_norm,
        )
        self.img_branch = Branch(dims.image_dim, **kw)
        self.txt_branch = Branch(dims.text_dim, **kw)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.img_branch(images)

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        return self.txt_branch(text.vectors)


class TwoBranchSimilarity(TwoBranchEmbedding):
    """The similarity network: element-wise product of the branch outputs, then FC layers -> a score."""

    class Params(_TwoBranchParams):
        fc_dims: tuple[int, ...] = (512, 256)  # hidden sizes after the product; a last FC maps to 1
        block_elements: int = Field(1 << 24, ge=1)  # bound on (pairs x dim) held at once when scoring

    def __init__(self, params: TwoBranchSimilarity.Params, dims: InputDims):
        super().__init__(params, dims)
        width = params.hidden_dim if params.linear else params.embed_dim
        layers: list[nn.Module] = []
        for out in params.fc_dims:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Scores of aligned pairs: ``img_emb (P, D)``, ``txt_emb (P, D)`` -> ``(P,)``."""
        return self.head(img_emb * txt_emb).squeeze(-1)

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Every image x every caption through the head, in row blocks of bounded memory."""
        n_img, n_txt, dim = img_emb.shape[0], txt_emb.shape[0], img_emb.shape[1]
        rows = max(1, self.params.block_elements // max(1, n_txt * dim))
        out = []
        for start in range(0, n_img, rows):
            block = img_emb[start : start + rows]
            fused = block[:, None, :] * txt_emb[None, :, :]
            out.append(self.head(fused).squeeze(-1))
        return torch.cat(out, 0) if out else img_emb.new_zeros(0, n_txt)
