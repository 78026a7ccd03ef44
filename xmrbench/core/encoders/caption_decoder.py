"""A caption generator conditioned on region features: GRU + additive attention,
trained with teacher forcing (the generation branch of VSRN, Li et al. ICCV 2019,
Section 3.3, "learning alignments by joint matching and generation").

At step ``t`` the decoder attends over the regions with its previous state,

    e_tr   = w . tanh(W_f v_r + W_h h_{t-1})        alpha_t = softmax_r(e_t)
    c_t    = sum_r alpha_tr v_r
    h_t    = GRU([E y_{t-1}; c_t], h_{t-1})          h_0 = tanh(W_0 mean_r v_r)
    p(y_t | y_<t, V) = softmax(W_o h_t)

and the loss is the negative log-likelihood of the ground-truth caption,
``L_G = -sum_t log p(y_t | y_<t, V)``, summed over the batch and divided by its number
of caption tokens (``loss_per="token"``) or of captions (``loss_per="caption"``, what
VSRN's released ``LanguageModelCriterion`` does).

:class:`Seq2SeqCaptionDecoder` is the captioner of VSRN's released code (docs/peers.md#vsrn):
an encoder reads the regions first,

    u_r = W_u v_r   (dropout)            (o_1..o_R), h_R = GRU(u_1..u_R)

and the decoder starts from the encoder's last state and attends over its outputs,

    e_tr   = w . tanh(W_a [o_r; h_{t-1}] + b_a)   alpha_t = softmax_r(e_t)
    c_t    = sum_r alpha_tr o_r
    h_t    = GRU(dropout([E y_{t-1}; c_t]), h_{t-1})   h_0 = h_R
    p(y_t | y_<t, V) = softmax(W_o h_t)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LossPer = Literal["token", "caption"]


class AttentionCaptionDecoder(nn.Module):
    """Generates token ids from ``regions (B, R, D)``; see the module docstring."""

    def __init__(self, feat_dim: int, vocab_size: int, *, word_dim: int, hidden_dim: int, dropout: float = 0.0,
                 loss_per: LossPer = "token"):
        super().__init__()
        self.loss_per = loss_per
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
        """Summed negative log-likelihood of the target tokens per token or per caption
        (``loss_per``), 0-d: ``regions (B, R, D)``, ``tokens (B, L)``, ``lengths (B,)``
        counting ``<start>`` and ``<end>``."""
        return caption_nll(self(regions, tokens), tokens, lengths, per=self.loss_per)



def caption_nll(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, *, per: LossPer) -> torch.Tensor:
    """Teacher-forced NLL (0-d): ``logits (B, L - 1, V)`` scoring ``tokens[:, 1:]`` of
    ``tokens (B, L)``, the targets past ``lengths (B,) - 1`` masked; the sum divided by
    the number of target tokens (``per="token"``) or by ``B`` (``per="caption"``)."""
    targets = tokens[:, 1:]
    steps = torch.arange(targets.shape[1], device=tokens.device)
    mask = (steps[None, :] < (lengths.to(tokens.device) - 1)[:, None]).to(logits.dtype)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    total = (nll.view_as(mask) * mask).sum()
    if per == "caption":
        return total / max(tokens.shape[0], 1)
    return total / mask.sum().clamp_min(1.0)


class Seq2SeqCaptionDecoder(nn.Module):
    """VSRN's released captioner, an encoder GRU over the regions and an attention
    decoder over its outputs: ``regions (B, R, D)`` -> token ids; see the module docstring.

    As released: one ``dropout`` for the projected regions and for the decoder's input
    ``[word; context]``, none on the decoder's output; the region projection and the
    output layer Xavier-normal, the word embedding PyTorch's default ``N(0, 1)``.
    """

    def __init__(self, feat_dim: int, vocab_size: int, *, word_dim: int, hidden_dim: int, dropout: float = 0.0,
                 loss_per: LossPer = "token"):
        super().__init__()
        self.loss_per = loss_per
        self.enc_proj = nn.Linear(feat_dim, hidden_dim)
        self.enc_rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.att = nn.Linear(2 * hidden_dim, hidden_dim)
        self.att_score = nn.Linear(hidden_dim, 1, bias=False)
        self.cell = nn.GRUCell(word_dim + hidden_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        nn.init.xavier_normal_(self.enc_proj.weight)
        nn.init.xavier_normal_(self.out.weight)

    def encode(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``regions (B, R, D)`` -> encoder outputs ``(B, R, H)`` and last state ``(B, H)``."""
        outputs, last = self.enc_rnn(self.drop(self.enc_proj(regions)))
        return outputs, last[-1]

    def attend(self, outputs: torch.Tensor, out_proj: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Context ``(B, H)`` over ``outputs (B, R, H)`` given the state ``hidden (B, H)``;
        ``out_proj (B, R, H)`` is the outputs' half of ``W_a [o_r; h] + b_a``."""
        h = hidden.shape[1]
        hidden_proj = hidden @ self.att.weight[:, h:].T
        scores = self.att_score(torch.tanh(out_proj + hidden_proj[:, None, :])).squeeze(-1)
        return (torch.softmax(scores, dim=1)[..., None] * outputs).sum(1)

    def forward(self, regions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, L - 1, V)`` for ``regions (B, R, D)`` and ``tokens (B, L)``,
        as :meth:`AttentionCaptionDecoder.forward`."""
        outputs, hidden = self.encode(regions)
        h = outputs.shape[-1]
        out_proj = outputs @ self.att.weight[:, :h].T + self.att.bias
        words = self.embed(tokens[:, :-1])
        logits = []
        for t in range(words.shape[1]):
            context = self.attend(outputs, out_proj, hidden)
            hidden = self.cell(self.drop(torch.cat([words[:, t], context], dim=-1)), hidden)
            logits.append(self.out(hidden))
        if not logits:
            return regions.new_zeros(tokens.shape[0], 0, self.out.out_features)
        return torch.stack(logits, dim=1)

    def loss(self, regions: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """As :meth:`AttentionCaptionDecoder.loss`."""
        return caption_nll(self(regions, tokens), tokens, lengths, per=self.loss_per)
