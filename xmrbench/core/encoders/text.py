"""Text encoders: word embeddings followed by a (bi-)GRU."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class GRUTextEncoder(nn.Module):
    """Word embeddings + GRU.

    ``pooling="last"`` returns the last valid hidden state ``(B, D)`` (VSE++);
    ``"mean"`` the mean over valid steps ``(B, D)``; ``"none"`` every step ``(B, L, D)``
    (word features for cross attention). A bidirectional GRU averages its forward and
    backward states (SCAN's convention), so the output size is ``embed_dim`` either way.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        word_dim: int,
        embed_dim: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: Literal["last", "mean", "none"] = "last",
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.rnn = nn.GRU(word_dim, embed_dim, num_layers=num_layers, batch_first=True, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.embed_dim = embed_dim
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens (B, L)`` long, ``lengths (B,)`` -> ``(B, D)`` or ``(B, L, D)``."""
        words = self.embed(tokens)
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        steps, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        if self.bidirectional:
            fwd, bwd = steps.chunk(2, dim=-1)
            steps = (fwd + bwd) / 2
        if self.pooling == "none":
            return steps
        lengths = lengths.to(steps.device)
        if self.pooling == "mean":
            mask = (torch.arange(steps.shape[1], device=steps.device)[None, :] < lengths[:, None]).to(steps.dtype)
            return (steps * mask[..., None]).sum(1) / lengths[:, None].to(steps.dtype)
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, steps.shape[-1])
        return steps.gather(1, index).squeeze(1)
