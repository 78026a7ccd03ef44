"""The interface every retrieval model implements, and the inputs it receives.

The engine knows models only through this interface:

- ``encode_images(images) -> img_emb``: ``images`` is ``(B, D_in)`` for global
  features or ``(B, R, D_in)`` for region features (``image_input``);
- ``encode_texts(text: TextBatch) -> txt_emb``: token ids or orderless vectors
  (``text_input``);
- ``similarity(img_emb, txt_emb) -> sims (N_img, N_txt)``: the score used both by
  the loss and for ranking. Embedding models use the dot product of L2-normalised
  vectors; cross-attention and per-pair models override it.

Optional hooks, used when a model defines them:

- ``auxiliary_loss(images, text, img_emb, txt_emb, labels) -> 0-d tensor`` is added to
  the training loss (VSRN's caption generation, say);
- ``fit(split)``: a closed-form model (CCA) is fitted on the prepared training split
  instead of trained by gradient descent; its cells set ``loss: null``.

Encoders may return a tensor or a :class:`Padded` (variable-length word or region
features for cross-attention models).
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


@dataclass
class Padded:
    """Variable-length features (words of captions, say): ``data (B, L, D)`` zero-padded
    after ``lengths (B,)`` valid steps. Models with word- or region-level outputs return
    this from an encoder; the engine concatenates and slices it like a tensor."""

    data: torch.Tensor
    lengths: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: slice | torch.Tensor) -> Padded:
        lengths = self.lengths[index]
        longest = int(lengths.max()) if len(lengths) else 0
        return Padded(self.data[index][:, :longest], lengths)

    def mask(self) -> torch.Tensor:
        """``(B, L)`` bool, True on valid steps."""
        steps = torch.arange(self.data.shape[1], device=self.data.device)
        return steps[None, :] < self.lengths.to(self.data.device)[:, None]

    def to(self, device: torch.device | str) -> Padded:
        return Padded(self.data.to(device), self.lengths)

    def float(self) -> Padded:
        return Padded(self.data.float(), self.lengths)

    def cpu(self) -> Padded:
        return Padded(self.data.cpu(), self.lengths.cpu())

    @staticmethod
    def cat(parts: list[Padded]) -> Padded:
        longest = max(p.data.shape[1] for p in parts)
        data = torch.cat([torch.nn.functional.pad(p.data, (0, 0, 0, longest - p.data.shape[1])) for p in parts])
        return Padded(data, torch.cat([p.lengths for p in parts]))


def concat(parts: list) -> torch.Tensor | Padded:
    """Concatenate encoder outputs along the batch: tensors or :class:`Padded`."""
    return Padded.cat(parts) if isinstance(parts[0], Padded) else torch.cat(parts)


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

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Scores of aligned pairs ``img_emb[p]``, ``txt_emb[p]`` -> ``(P,)``; equals the
        diagonal of ``similarity`` (used by losses that score sampled pairs only)."""
        return (img_emb * txt_emb).sum(-1)
