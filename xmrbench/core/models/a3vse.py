"""A3VSE's encoders (Huang, Kang, Liu, Chang, Hauptmann, "Annotation Efficient
Cross-Modal Retrieval with Adversarial Attentive Alignment", ACM MM 2019, Sec. 3.2-3.3).

Two encoders, each a feature extractor followed by an attentive encoder:

- images, ``G^v = E^v o F^v``: ``F^v`` is the fixed detector's region features
  ``(B, N, D_in)`` (raw, not L2-normalised; Sec. 4.3) mapped into the H-dimensional
  joint space by one trainable fully connected layer;
- texts, ``G^t = E^t o F^t``: ``F^t`` is a word embedding (the one pretrained word
  vectors initialise) followed by an LSTM, one H-dimensional state per word.

Captions ``t`` and regional semantics ``s`` share ``G^t``: ``s`` is the sentence made of
an un-annotated image's detections, "attribute class" per object sorted by
confidence ("blue car white dog ..."), tokenised with the captions' vocabulary and
encoded by :meth:`A3VSE.encode_texts` exactly like a caption. Annotated images ``v``
and un-annotated images ``v^u`` likewise share ``G^v`` (:meth:`A3VSE.encode_images`).

The attentive encoder (Eq. 1). The printed equation is garbled: it uses alpha both for
the attention logits and for the weights, and the product inside ``tanh(P_k ...)``
lost its operand. xmrbench reads it, with the printed shapes ``P_k, Q_k (K', H)``, as::

    c_k  = 1/M sum_{i'} tanh(Q_k x_{i'})            context of head k, (K',)
    a_ik = tanh(P_k x_i) . c_k                      logit of item i in head k
    w_ik = softmax_i(lambda a_ik)                   the weights W_k (1, M)
    h_k  = sum_i w_ik x_i                           head k's output, (H,)

where ``x_1 .. x_M`` are the encoded regions (or words; padding is neither averaged
into ``c_k`` nor attended) and ``P_k``, ``Q_k`` carry no bias, as the equation writes
them. Eq. 1 concatenates the K head outputs; the joint space is H-dimensional, so
they are combined into one H-vector: averaged (``head_combine: mean``, the default:
it adds no parameters beyond the paper's ``theta_attn = {P_k, Q_k}``) or concatenated
and projected by a linear map ``(K H -> H)`` (``head_combine: project``).
``pooling: mean`` replaces the attention by the plain mean over valid items (Table 5's
"without attention" ablation). Both embeddings are L2-normalised, so the dot product
of :meth:`~xmrbench.core.models.base.RetrievalModel.similarity` is the cosine
similarity ``S(a, b)`` of Sec. 3.3.

Choices the paper leaves open, and why:

- the temperature lambda (``attn_temperature``, shared by E^v and E^t). Unset, it is
  ``1 / sqrt(K')``: every logit is a sum of K' products of numbers in [-1, 1], so this
  scaling keeps the initial logits of order one (near-uniform attention, useful
  gradients to every item) while still allowing a logit range of ``+-sqrt(K')``, sharp
  enough to single out one region. It is the scaled dot-product convention.
- ``K'`` (``context_dim``): Sec. 4.3 says the context vectors share the embedding
  dimension, so unset it is H.
- the text LSTM: one unidirectional layer (the paper names "an LSTM" and nothing more).
- initialisation: Xavier-uniform for every weight matrix (Sec. 4.3), zero biases; the
  word embedding starts uniform in [-0.1, 0.1] unless word vectors overwrite it.

Defaults follow Sec. 4.3: H = 512, K = 3, 300-dimensional (GloVe) word embeddings.
The training objective (the beta-weighted triplet of Eq. 2-3 and the six domain
discriminators of Eq. 4-8) is in :mod:`xmrbench.core.losses.a3vse`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.core.sim.cosine import l2norm
from xmrbench.params import Params


def _xavier(module: nn.Module) -> None:
    """Xavier-uniform weight matrices and zero biases of every linear layer and LSTM in ``module``."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LSTM):
            for name, weight in sub.named_parameters():
                if name.startswith("weight"):
                    nn.init.xavier_uniform_(weight)
                else:
                    nn.init.zeros_(weight)


def masked_mean(items: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``items (B, N, D)`` over the valid steps of ``mask (B, N)`` (all if None) -> ``(B, D)``."""
    if mask is None:
        return items.mean(1)
    weights = mask.to(items.dtype)
    return (items * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


class LSTMTextEncoder(nn.Module):
    """``F^t``: word embedding + one-layer LSTM; token ids ``(B, L)`` -> word states ``(B, L, H)``,
    zero after each text's length."""

    def __init__(self, vocab_size: int, *, word_dim: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.rnn = nn.LSTM(word_dim, embed_dim, batch_first=True)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        steps, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=tokens.shape[1])
        return steps


class AttentiveEncoder(nn.Module):
    """``E`` of Eq. 1 (read as in the module docstring): K context-aware attention heads
    over encoded items ``(B, N, H)``, combined into one ``(B, H)`` vector."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        context_dim: int,
        temperature: float,
        head_combine: Literal["mean", "project"] = "mean",
        pooling: Literal["attention", "mean"] = "attention",
    ):
        super().__init__()
        self.temperature = temperature
        self.head_combine = head_combine
        self.pooling = pooling
        self.P: nn.Parameter | None = None
        self.Q: nn.Parameter | None = None
        self.proj: nn.Linear | None = None
        if pooling == "mean":  # the ablation has no attention parameters at all
            return
        self.P = nn.Parameter(torch.empty(heads, context_dim, dim))  # P_k, one (K', H) matrix per head
        self.Q = nn.Parameter(torch.empty(heads, context_dim, dim))  # Q_k
        with torch.no_grad():
            for k in range(heads):
                nn.init.xavier_uniform_(self.P[k])
                nn.init.xavier_uniform_(self.Q[k])
        if head_combine == "project":
            self.proj = nn.Linear(heads * dim, dim)
            _xavier(self.proj)

    def weights(self, items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights ``W (B, K, N)``: per head a softmax over the valid items of
        ``items (B, N, H)`` (``mask (B, N)``, True on valid items; None: all valid)."""
        if self.P is None or self.Q is None:
            raise ValueError("an encoder with pooling 'mean' has no attention weights")
        keys = torch.tanh(torch.einsum("bnh,kch->bknc", items, self.Q))  # tanh(Q_k x_i')
        if mask is None:
            context = keys.mean(2)
        else:
            valid = mask[:, None, :, None].to(items.dtype)
            context = (keys * valid).sum(2) / valid.sum(2)  # c_k: mean over valid items only
        queries = torch.tanh(torch.einsum("bnh,kch->bknc", items, self.P))  # tanh(P_k x_i)
        logits = self.temperature * (queries * context[:, :, None, :]).sum(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``items (B, N, H)``, ``mask (B, N)`` or None -> ``(B, H)`` (not normalised)."""
        if self.pooling == "mean":
            return masked_mean(items, mask)
        heads = torch.einsum("bkn,bnh->bkh", self.weights(items, mask), items)
        if self.proj is None:
            return heads.mean(1)
        return self.proj(heads.flatten(1))


class A3VSE(RetrievalModel):
    """A3VSE's attentive encoders ``G^v`` and ``G^t`` with cosine similarity; see the module docstring."""

    class Params(Params):
        embed_dim: int = Field(512, ge=1)  # H
        word_dim: int = Field(300, ge=1)  # GloVe-initialised word embeddings
        heads: int = Field(3, ge=1)  # K
        context_dim: int | None = Field(None, ge=1)  # K'; None: H (Sec. 4.3)
        attn_temperature: float | None = Field(None, gt=0)  # lambda_v = lambda_t; None: 1 / sqrt(K')
        head_combine: Literal["mean", "project"] = "mean"
        pooling: Literal["attention", "mean"] = "attention"  # "mean": Table 5's ablation
        image_input: Literal["regions"] = "regions"
        text_input: Literal["tokens"] = "tokens"

    params: Params

    def __init__(self, params: A3VSE.Params, dims: InputDims):
        super().__init__(params, dims)
        h = params.embed_dim
        context = params.context_dim or h
        temperature = params.attn_temperature if params.attn_temperature is not None else 1.0 / math.sqrt(context)
        attention = dict(heads=params.heads, context_dim=context, temperature=temperature,
                         head_combine=params.head_combine, pooling=params.pooling)
        self.img_fc = nn.Linear(dims.image_dim, h)  # the trainable layer of F^v
        _xavier(self.img_fc)
        self.txt_enc = LSTMTextEncoder(dims.vocab_size, word_dim=params.word_dim, embed_dim=h)  # F^t
        _xavier(self.txt_enc.rnn)
        self.img_att = AttentiveEncoder(h, **attention)  # E^v
        self.txt_att = AttentiveEncoder(h, **attention)  # E^t, its own parameters

    def image_regions(self, images: torch.Tensor) -> torch.Tensor:
        """``F^v``: region features ``(B, N, D_in)`` -> ``(B, N, H)``."""
        if images.dim() != 3:
            raise ValueError(f"A3VSE needs region features (B, N, D); got shape {tuple(images.shape)}")
        return self.img_fc(images)

    def text_words(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``F^t``: token ids -> word states ``(B, L, H)`` and their mask ``(B, L)`` (True on words)."""
        if text.tokens is None or text.lengths is None:
            raise ValueError("A3VSE reads token ids (text_input: tokens)")
        if len(text.lengths) and int(text.lengths.min()) < 1:
            raise ValueError("A3VSE cannot encode an empty text (a length below 1)")
        words = self.txt_enc(text.tokens, text.lengths)
        steps = torch.arange(words.shape[1], device=words.device)
        return words, steps[None, :] < text.lengths.to(words.device)[:, None]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``G^v(v)`` for annotated or un-annotated images: ``(B, N, D_in)`` -> ``img_emb (B, H)``, unit norm."""
        return l2norm(self.img_att(self.image_regions(images)))

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """``G^t`` for captions and regional semantics alike: token ids -> ``txt_emb (B, H)``, unit norm."""
        words, mask = self.text_words(text)
        return l2norm(self.txt_att(words, mask))

    def word_embedding(self) -> nn.Embedding:
        """The word embedding of ``F^t`` (pretrained word vectors initialise it)."""
        return self.txt_enc.embed
