"""DAN for image-text matching (Nam, Ha, Kim, "Dual Attention Networks for Multimodal
Reasoning and Matching", CVPR 2017): the matching network m-DAN, on precomputed
region features.

m-DAN attends over the regions ``v_n`` of an image and the words ``u_t`` of a
caption for ``K`` steps. Each modality keeps its own memory vector, so an image and
a caption are encoded independently (Section 4.2)::

    v^(0) = tanh(P^(0) mean_n v_n)                u^(0) = mean_t u_t
    m_v^(0) = v^(0)                               m_u^(0) = u^(0)

    step k = 1..K, visual attention:
      h_n = tanh(W_v v_n) * tanh(W_vm m_v^(k-1))        a_n = softmax_n(w_vh . h_n)
      v^(k) = tanh(P^(k) sum_n a_n v_n)                 m_v^(k) = m_v^(k-1) + v^(k)
    textual attention:
      h_t = tanh(W_u u_t) * tanh(W_um m_u^(k-1))        a_t = softmax_t(w_uh . h_t)
      u^(k) = sum_t a_t u_t                             m_u^(k) = m_u^(k-1) + u^(k)

    S(v, u) = sum_{k=0..K} v^(k) . u^(k)

Every step has its own weights; the linear maps carry biases (the paper omits them
from its notation). The image embedding is the concatenation ``[v^(0); ...; v^(K)]``
and the caption embedding ``[u^(0); ...; u^(K)]`` (``(B, (K+1) H)`` each), so ``S`` is
their dot product and the similarity matrix is one matrix product. The paper trains
with the bidirectional hinge summed over negatives at margin 100 (``loss.name:
triplet_sum``).

The paper's reasoning network r-DAN (for VQA) instead shares one memory,
``m^(k) = m^(k-1) + v^(k) * u^(k)``, so its image representation depends on the
question; the retrieval numbers the A3VSE and ADAPT tables cite for DAN are
m-DAN's, which is what this module builds.

Where this feature-level version differs from the paper: the paper's regions are
the 14x14 grid of a ResNet-152 (448x448 input) and its text encoder a bi-LSTM; here
the regions are precomputed (36 bottom-up regions in precomp files) and the text
encoder a bi-GRU whose two directions are averaged (SCAN's convention); nothing is
fine-tuned end to end.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from xmrbench.core.encoders.text import GRUTextEncoder
from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch
from xmrbench.params import Params


class StepAttention(nn.Module):
    """Attention weights of one step: ``items (B, N, D)``, ``memory (B, H)``, ``mask (B, N)`` or
    None -> ``(B, N)``, ``softmax_n(w . (tanh(W_i x_n) * tanh(W_m m)))``."""

    def __init__(self, item_dim: int, hidden: int):
        super().__init__()
        self.item = nn.Linear(item_dim, hidden)
        self.memory = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, items: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        joint = torch.tanh(self.item(items)) * torch.tanh(self.memory(memory))[:, None, :]
        scores = self.score(joint).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)


class DAN(RetrievalModel):
    """m-DAN: K-step dual attention with one memory per modality; see the module docstring."""

    class Params(Params):
        embed_dim: int = Field(512, ge=1)  # H: attention, memory and per-step embedding size
        word_dim: int = Field(512, ge=1)
        steps: int = Field(2, ge=0)  # K (2 in the paper)
        bidirectional: bool = True  # the paper's text encoder is bidirectional
        image_input: Literal["regions"] = "regions"
        text_input: Literal["tokens"] = "tokens"

    params: Params

    def __init__(self, params: DAN.Params, dims: InputDims):
        super().__init__(params, dims)
        h, k = params.embed_dim, params.steps
        self.img_init = nn.Linear(dims.image_dim, h)  # P^(0)
        self.img_att = nn.ModuleList(StepAttention(dims.image_dim, h) for _ in range(k))
        self.img_proj = nn.ModuleList(nn.Linear(dims.image_dim, h) for _ in range(k))  # P^(k)
        self.txt_enc = GRUTextEncoder(
            dims.vocab_size, word_dim=params.word_dim, embed_dim=h, bidirectional=params.bidirectional, pooling="none"
        )
        self.txt_att = nn.ModuleList(StepAttention(h, h) for _ in range(k))

    def image_steps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images (B, N, D_in)`` -> ``[v^(0), ..., v^(K)]``, each ``(B, H)``."""
        if images.dim() != 3:
            raise ValueError(f"DAN needs region features (B, N, D); got shape {tuple(images.shape)}")
        v = torch.tanh(self.img_init(images.mean(1)))
        memory, out = v, [v]
        for att, proj in zip(self.img_att, self.img_proj):
            weights = att(images, memory)
            v = torch.tanh(proj((weights[..., None] * images).sum(1)))
            memory = memory + v
            out.append(v)
        return out

    def text_steps(self, text: TextBatch) -> list[torch.Tensor]:
        """Token ids -> ``[u^(0), ..., u^(K)]``, each ``(B, H)``; padding is never attended."""
        words = self.txt_enc(text.tokens, text.lengths)  # (B, L, H), zeros after each caption
        steps = torch.arange(words.shape[1], device=words.device)
        lengths = text.lengths.to(words.device)
        mask = steps[None, :] < lengths[:, None]
        u = words.sum(1) / lengths[:, None].to(words.dtype)
        memory, out = u, [u]
        for att in self.txt_att:
            weights = att(words, memory, mask)
            u = (weights[..., None] * words).sum(1)
            memory = memory + u
            out.append(u)
        return out

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, N, D_in)`` -> ``img_emb (B, (K+1) H)``, the steps' vectors concatenated."""
        return torch.cat(self.image_steps(images), dim=-1)

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """Token ids -> ``txt_emb (B, (K+1) H)``; ``img_emb @ txt_emb.T`` is ``S = sum_k v^(k) . u^(k)``."""
        return torch.cat(self.text_steps(text), dim=-1)

    def word_embedding(self) -> nn.Embedding:
        """The caption encoder's token embedding (pretrained word vectors initialise it)."""
        return self.txt_enc.embed
