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

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch, pairwise_tiles
from xmrbench.core.sim.cosine import l2norm
from xmrbench.core.sim.cross_attention import in_place_allowed
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


#: product elements per tile of the similarity network's all-pairs scoring (see ``similarity``)
CACHE_TILE = 1 << 20


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
        """Every image x every caption through the head, tile by tile. Without a recorded
        gradient (evaluation, mining) a tile holds at most ``min(block_elements, CACHE_TILE)``
        product elements: 2**20 (4 MiB) keeps the tile and the FC activations after it in the
        caches, and ran 1.6x faster than tiles of 2**24 on a 2-core CPU, within a few per cent
        of its GEMM rate (``xmrbench bench simnet``). The head scores each pair by itself, so
        the tile size changes no equation (and, on the BLAS builds measured, no bit). In
        training the tiles stay at ``block_elements``: the backward pass sums each
        embedding's gradient over its tile, and a smaller tile would reorder that sum."""
        budget = self.params.block_elements
        if in_place_allowed(img_emb, txt_emb):
            budget = min(budget, CACHE_TILE)
        return pairwise_tiles(img_emb, txt_emb, budget, lambda img, txt: self.head(img * txt).squeeze(-1))
