"""A caption generator conditioned on region features: GRU + additive attention,
trained with teacher forcing (the generation branch of VSRN, Li et al. ICCV 2019,
Section 3.3, "learning alignments by joint matching and generation").

At step ``t`` the decoder attends over the regions with its previous state,

    e_tr   = w . tanh(W_f v_r + W_h h_{t-1})        alpha_t = softmax_r(e_t)
    c_t    = sum_r alpha_tr v_r
    h_t    = GRU([E y_{t-1}; c_t], h_{t-1})          h_0 = tanh(W_0 mean_r v_r)
    p(y_t | y_<t, V) = softmax(W_o h_t)

and the loss is the negative log-likelihood of the ground-truth caption,
``L_G = -sum_t log p(y_t | y_<t, V)``, averaged over the caption tokens of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionCaptionDecoder(nn.Module):
    """Generates token ids from ``regions (B, R, D)``; see the module docstring."""

    def __init__(self, feat_dim: int, vocab_size: int, *, word_dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.init_hidden = nn.Linear(feat_dim, hidden_dim)
        self.att_feat = nn.Linear(feat_dim, hidden_dim)
        self.att_hidden = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.att_score = nn.Linear(hidden_dim, 1, bias=False)
        self.cell = nn.GRUCell(word_dim + feat_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def attend(self, regions: torch.Tensor, feat_proj: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ``(B, D)`` and weights ``(B, R)`` for ``regions (B, R, D)`` given the state ``hidden (B, H)``.

        ``feat_proj (B, R, H)`` is ``W_f v_r``, computed once per caption.
        """
        scores = self.att_score(torch.tanh(feat_proj + self.att_hidden(hidden)[:, None, :])).squeeze(-1)
        weights = torch.softmax(scores, dim=1)
        return (weights[..., None] * regions).sum(1), weights

    def forward(self, regions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: ``regions (B, R, D)``, ``tokens (B, L)`` (``<start> ... <end>``, zero
        padded) -> ``(B, L - 1, V)``; step ``t`` predicts ``tokens[:, t + 1]`` from ``tokens[:, : t + 1]``."""
        hidden = torch.tanh(self.init_hidden(regions.mean(1)))
        feat_proj = self.att_feat(regions)
        words = self.drop(self.embed(tokens[:, :-1]))
        logits = []
        for t in range(words.shape[1]):
            context, _ = self.attend(regions, feat_proj, hidden)
            hidden = self.cell(torch.cat([words[:, t], context], dim=-1), hidden)
            logits.append(self.out(self.drop(hidden)))
        if not logits:
            return regions.new_zeros(tokens.shape[0], 0, self.out.out_features)
        return torch.stack(logits, dim=1)

    def loss(self, regions: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per target token (0-d): ``regions (B, R, D)``,
        ``tokens (B, L)``, ``lengths (B,)`` counting ``<start>`` and ``<end>``."""
        logits = self(regions, tokens)
        targets = tokens[:, 1:]
        steps = torch.arange(targets.shape[1], device=tokens.device)
        mask = (steps[None, :] < (lengths.to(tokens.device) - 1)[:, None]).to(logits.dtype)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        return (nll.view_as(mask) * mask).sum() / mask.sum().clamp_min(1.0)
