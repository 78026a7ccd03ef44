"""SCAN (Lee, Chen, Hua, Hu, He, "Stacked Cross Attention for Image-Text Matching", ECCV 2018).

Image: a linear projection of each region feature (``image_input: regions``,
``(B, R, D_in)``), L2-normalised per region. Text: word embeddings + (bi-)GRU, the
forward and backward states averaged, L2-normalised per word, returned as
:class:`~xmrbench.core.models.base.Padded` word features. Similarity: stacked cross
attention, text-to-image (``direction: t2i``: each word attends to the regions) or
image-to-text (``i2t``: each region attends to the words), pooled by ``avg`` or ``lse``
(SCAN Eq. 1-5; the kernel and its equations are in
:mod:`xmrbench.core.sim.cross_attention`). Trained with the max-violation hinge loss
(``loss.name: hardest_negative``, margin 0.2). SCAN-ens (the average of a t-i and an
i-t model's similarity matrices) is a recipe ``ensemble:`` row.

Presets (docs/peers.md#scan): embedding 1024, word embedding 300, bi-GRU; t-i: lambda_softmax 9,
LSE lambda 6; i-t: lambda_softmax 4, LSE lambda 5 (Flickr30K) or 20 (MS-COCO). An unset
``lambda_softmax``/``lambda_lse`` takes the preset of the chosen direction (the
Flickr30K one for i-t), so switching ``direction`` alone switches the presets.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xmrbench.core.encoders.image import FCImageEncoder
from xmrbench.core.encoders.text import GRUTextEncoder
from xmrbench.core.models.base import InputDims, Padded, RetrievalModel, TextBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.core.sim.cross_attention import scan_pair_scores, scan_sims
from xmrbench.params import Params

#: direction -> (lambda_softmax, lambda_lse), SCAN's Flickr30K presets (docs/peers.md#scan)
SCAN_PRESETS = {"t2i": (9.0, 6.0), "i2t": (4.0, 5.0)}


class CrossAttentionEncoders(RetrievalModel):
    """The encoders SCAN and BFAN share: per-region projection and per-word bi-GRU
    features, both L2-normalised. Images ``(B, R, D_in)`` -> ``(B, R, D)``; captions ->
    ``Padded`` ``(B, L, D)``."""

    def __init__(self, params: Any, dims: InputDims):
        super().__init__(params, dims)
        self.img_enc = FCImageEncoder(dims.image_dim, params.embed_dim)
        self.txt_enc = GRUTextEncoder(
            dims.vocab_size,
            word_dim=params.word_dim,
            embed_dim=params.embed_dim,
            num_layers=params.num_layers,
            bidirectional=params.bidirectional_gru,
            pooling="none",
        )

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 3:
            raise ValueError(f"{type(self).__name__} needs region features (B, R, D); got shape {tuple(images.shape)}")
        return l2norm(self.img_enc(images))

    def encode_texts(self, text: TextBatch) -> Padded:
        words = l2norm(self.txt_enc(text.tokens, text.lengths))
        return Padded(words, text.lengths)

    def word_embedding(self) -> nn.Embedding:
        """The caption encoder's token embedding (pretrained word vectors initialise it)."""
        return self.txt_enc.embed

    @property
    def budget_bytes(self) -> int:
        return self.params.sim_memory_mb * 2**20


class SCAN(CrossAttentionEncoders):
    """Stacked cross attention, one direction (t2i or i2t) per model."""

    class Params(Params):
        embed_dim: int = Field(1024, ge=1)
        word_dim: int = Field(300, ge=1)
        num_layers: int = Field(1, ge=1)
        bidirectional_gru: bool = True  # forward and backward states averaged
        direction: Literal["t2i", "i2t"] = "t2i"
        pooling: Literal["avg", "lse"] = "lse"
        lambda_softmax: float = Field(9.0, gt=0)  # unset: the direction's preset (t2i 9, i2t 4)
        lambda_lse: float = Field(6.0, gt=0)  # unset: the direction's preset (t2i 6, i2t 5)
        image_input: Literal["regions"] = "regions"
        text_input: Literal["tokens"] = "tokens"
        sim_memory_mb: int = Field(512, ge=16)  # working-set budget of the similarity kernel (evaluation)

        @model_validator(mode="before")
        @classmethod
        def _direction_presets(cls, data: Any) -> Any:
            if not isinstance(data, dict):
                return data
            direction = data.get("direction", "t2i")
            if direction not in SCAN_PRESETS:
                return data  # the Literal check reports it
            softmax, lse = SCAN_PRESETS[direction]
            return {"lambda_softmax": softmax, "lambda_lse": lse, **data}

    params: Params

    def _kernel_kw(self) -> dict[str, Any]:
        p = self.params
        return dict(direction=p.direction, lambda_softmax=p.lambda_softmax, pooling=p.pooling, lambda_lse=p.lambda_lse)

    def similarity(self, img_emb: torch.Tensor, txt_emb: Padded) -> torch.Tensor:
        """``img_emb (N_img, R, D)``, ``txt_emb`` Padded ``(N_txt, L, D)`` -> ``sims (N_img, N_txt)``."""
        return scan_sims(img_emb, txt_emb.data, txt_emb.lengths, budget_bytes=self.budget_bytes, **self._kernel_kw())

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: Padded) -> torch.Tensor:
        """Aligned pairs: ``img_emb (P, R, D)``, ``txt_emb`` Padded ``(P, L, D)`` -> ``(P,)``."""
        return scan_pair_scores(img_emb, txt_emb.data, txt_emb.lengths, **self._kernel_kw())
