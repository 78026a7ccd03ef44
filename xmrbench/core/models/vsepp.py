"""VSE++ (Faghri et al., BMVC 2018) on precomputed image features.

Image: one linear projection of a global feature (or of the mean of the region
features) followed by L2 normalisation. Text: word embeddings + GRU, last hidden
state, L2 normalisation. Similarity: cosine. Trained with the hardest-negative
("max violation") hinge loss, ``loss.name: hardest_negative``; the sum-of-hinges
variant (VSE0) is ``loss.name: triplet_sum``. End-to-end CNN fine-tuning is not
part of this model (precomputed features only).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from xmrbench.core.encoders.image import FCImageEncoder
from xmrbench.core.encoders.text import GRUTextEncoder
from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.params import Params


class VSEPP(RetrievalModel):
    class Params(Params):
        embed_dim: int = Field(1024, ge=1)
        word_dim: int = Field(300, ge=1)
        num_layers: int = Field(1, ge=1)
        bidirectional: bool = False
        image_input: Literal["global", "mean_regions"] = "global"
        text_input: Literal["tokens"] = "tokens"
        image_norm: bool = True

    def __init__(self, params: VSEPP.Params, dims: InputDims):
        super().__init__(params, dims)
        self.img_enc = FCImageEncoder(dims.image_dim, params.embed_dim)
        self.txt_enc = GRUTextEncoder(
            dims.vocab_size,
            word_dim=params.word_dim,
            embed_dim=params.embed_dim,
            num_layers=params.num_layers,
            bidirectional=params.bidirectional,
            pooling="last",
        )

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.img_enc(images)
        return l2norm(emb) if self.params.image_norm else emb

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        return l2norm(self.txt_enc(text.tokens, text.lengths))

    def word_embedding(self) -> nn.Embedding:
        """The caption encoder's token embedding (pretrained word vectors initialise it)."""
        return self.txt_enc.embed
