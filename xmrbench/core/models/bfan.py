"""BFAN (Liu et al., "Focus Your Attention: A Bidirectional Focal Attention
Network for Image-Text Matching", ACM MM 2019).

Encoders as SCAN's (per-region projection, bi-GRU word features, both
L2-normalised; :class:`~xmrbench.core.models.scan.CrossAttentionEncoders`). Similarity:
bidirectional focal attention, the sum of a text-to-image and an image-to-text score in
which each query fragment's attention is reassigned to the context fragments whose
pre-assigned attention beats the others' ("equal": the mean; "prob": the mean weighted
by the square roots of the attention probabilities), the rest being discarded. The
equations, where they come from and the one deviation are in
:mod:`xmrbench.core.sim.focal_attention`. Trained with the max-violation hinge loss
(``loss.name: hardest_negative``). BFAN-ens (equal + prob) is a recipe ``ensemble:`` row.

Presets (docs/peers.md#bfan): focal lambda (the softmax temperature) 20, embedding 1024, word
embedding 300, bi-GRU.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from xmrbench.core.models.base import Padded
from xmrbench.core.models.scan import CrossAttentionEncoders
from xmrbench.core.sim.focal_attention import bfan_pair_scores, bfan_sims
from xmrbench.params import Params


class BFAN(CrossAttentionEncoders):
    """Bidirectional focal attention network."""

    class Params(Params):
        embed_dim: int = Field(1024, ge=1)
        word_dim: int = Field(300, ge=1)
        num_layers: int = Field(1, ge=1)
        bidirectional_gru: bool = True  # forward and backward states averaged
        focal: Literal["equal", "prob"] = "equal"
        lambda_softmax: float = Field(20.0, gt=0)  # the focal lambda
        image_input: Literal["regions"] = "regions"
        text_input: Literal["tokens"] = "tokens"
        sim_memory_mb: int = Field(512, ge=16)  # working-set budget of the similarity kernel (evaluation)

    params: Params

    def similarity(self, img_emb: torch.Tensor, txt_emb: Padded) -> torch.Tensor:
        """``img_emb (N_img, R, D)``, ``txt_emb`` Padded ``(N_txt, L, D)`` -> ``sims (N_img, N_txt)``."""
        p = self.params
        return bfan_sims(
            img_emb, txt_emb.data, txt_emb.lengths,
            focal=p.focal, lambda_softmax=p.lambda_softmax, budget_bytes=self.budget_bytes,
        )

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: Padded) -> torch.Tensor:
        """Aligned pairs: ``img_emb (P, R, D)``, ``txt_emb`` Padded ``(P, L, D)`` -> ``(P,)``."""
        p = self.params
        return bfan_pair_scores(img_emb, txt_emb.data, txt_emb.lengths, focal=p.focal, lambda_softmax=p.lambda_softmax)
