"""The interface every retrieval model implements, and the inputs it receives.

The engine knows models only through this interface:

- ``encode_images(images) -> img_emb``: ``images`` is ``(B, D_in)`` for global
  features or ``(B, R, D_in)`` for region features (``image_input``);
- ``encode_texts(text: TextBatch) -> txt_emb``: token ids or orderless vectors
  (``text_input``);
- ``similarity(img_emb, txt_emb) -> sims (N_img, N_txt)``: the score used both by
  the loss and for ranking. Embedding models use the dot product of L2-normalised
  vectors; cross-attention and per-pair models override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from xmrbench.params import Params


@dataclass(frozen=True)
class InputDims:
    """Sizes of the inputs a model is built for."""

    image_dim: int  # feature size of one global vector or one region
    vocab_size: int  # for token inputs
    text_dim: int | None = None  # for vector text inputs (tf-idf)
    n_regions: int | None = None


@dataclass
class TextBatch:
    """Captions as padded token ids ``(B, L)`` + ``lengths (B,)``, or as vectors ``(B, V)``."""

    tokens: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    vectors: torch.Tensor | None = None

    def to(self, device: torch.device) -> TextBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        # lengths stay on the CPU: pack_padded_sequence wants them there
        return TextBatch(move(self.tokens), self.lengths, move(self.vectors))

    def __len__(self) -> int:
        ref = self.tokens if self.tokens is not None else self.vectors
        return 0 if ref is None else int(ref.shape[0])


class RetrievalModel(nn.Module):
    """Base class: subclasses set ``Params`` and implement the two encoders."""

    Params: ClassVar[type[Params]]

    def __init__(self, params: Params, dims: InputDims):
        super().__init__()
        self.params = params
        self.dims = dims

    @property
    def image_input(self) -> str:
        """``"global"``, ``"regions"`` or ``"mean_regions"``."""
        return getattr(self.params, "image_input", "global")

    @property
    def text_input(self) -> str:
        """``"tokens"`` or ``"tfidf"``."""
        return getattr(self.params, "text_input", "tokens")

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        raise NotImplementedError

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``sims (N_img, N_txt)``; default: dot product (cosine for L2-normalised embeddings)."""
        return img_emb @ txt_emb.t()
