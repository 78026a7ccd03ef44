"""A residual text CNN (the text path of DPC, Zheng et al. 2017/2020, Section 3.2).

Captions are read as a sequence of word vectors; a position-wise projection (DPC's
1x1 convolution over one-hot words, which is a word embedding) is followed by
residual blocks of width-2 convolutions (DPC's 1x2 kernels)::

    y = ReLU(x + BN(conv2(ReLU(BN(conv1(x))))))      conv_k(x)_t = W0 x_t + W1 x_{t+1} + b

and an average over the caption's words. Positions after a caption's end are
zeros and excluded from the batch-norm statistics and from the average, so a
caption's encoding does not depend on how long the other captions of its batch are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batch-normalise the valid positions of ``x (B, L, C)`` (``mask (B, L)`` bool) over the
    channels; padded positions come out as zeros."""
    out = torch.zeros_like(x)
    out[mask] = bn(x[mask])
    return out


class PairConv(nn.Module):
    """Width-2 convolution along the words: ``(B, L, C) -> (B, L, C_out)``,
    ``y_t = W0 x_t + W1 x_{t+1} + b`` with ``x_L = 0``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x.transpose(1, 2), (0, 1))  # one zero position on the right
        return self.conv(padded).transpose(1, 2)


class ResidualPairBlock(nn.Module):
    """``ReLU(x + BN(conv2(ReLU(BN(conv1(x))))))`` on the valid positions of ``(B, L, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.bn1 = PairConv(dim, dim), nn.BatchNorm1d(dim)
        self.conv2, self.bn2 = PairConv(dim, dim), nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(masked_batch_norm(self.bn1, self.conv1(x), mask))
        h = masked_batch_norm(self.bn2, self.conv2(h), mask)
        return torch.relu(x + h) * mask[..., None]


class ResidualTextCNN(nn.Module):
    """``tokens (B, L)``, ``lengths (B,)`` -> the average of the last block's outputs ``(B, C)``."""

    def __init__(self, vocab_size: int, *, word_dim: int, channels: int, blocks: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.proj = nn.Linear(word_dim, channels)
        self.blocks = nn.ModuleList(ResidualPairBlock(channels) for _ in range(blocks))
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        lengths = lengths.to(tokens.device)
        mask = steps[None, :] < lengths[:, None]
        x = self.proj(self.embed(tokens)) * mask[..., None]
        for block in self.blocks:
            x = block(x, mask)
        return x.sum(1) / lengths[:, None].to(x.dtype)
