"""DPC (Zheng, Zheng, Garrett, Yang, Shen, "Dual-Path Convolutional Image-Text
Embeddings with Instance Loss", arXiv 1711.05535, 2017; TOMM 2020) on precomputed
image features.

Two paths map an image and a caption to ``f_v``, ``f_t`` in ``R^D``:

- image path: a precomputed feature (a global vector, or the mean of the region
  features) -> FC -> BN -> ReLU -> dropout -> FC;
- text path: a residual text CNN with width-2 convolutions over word vectors and
  average pooling (:mod:`xmrbench.core.encoders.text_cnn`) -> FC -> BN -> ReLU ->
  dropout -> FC.

Similarity: the cosine of ``f_v`` and ``f_t`` (``similarity`` normalises; the encoders
return the un-normalised features, which the instance classifier reads).

Training loss (Section 3.3-3.4): ``L = L_rank + instance_weight * (L_v + L_t)``.
``L_rank`` is the engine's loss (``loss.name: hardest_negative``: the bidirectional
hinge on the hardest negative of the batch with margin 1 on cosine similarities, as
DPC's ranking layer). The instance loss is added by :meth:`DPC.auxiliary_loss`: each
training image and its captions form one class (the image's index in the training
split), and one classifier ``W_share`` shared by both paths scores the classes
(:mod:`xmrbench.core.losses.instance`).

Where this feature-level version differs from the paper:

- the paper's image path is a ResNet-50 fine-tuned end to end on pixels; here a
  two-layer MLP on fixed features (so DPC's motivation for end-to-end learning is
  absent);
- the paper's text CNN is a deep ResNet-50-like stack of 1x2 bottleneck blocks over
  one-hot words (first layer initialised from word2vec, fixed length 32); here
  ``text_blocks`` plain residual blocks of width ``text_channels``, randomly
  initialised word vectors and captions of any length (padding masked out);
- the paper trains in two stages (instance loss only with the image CNN frozen,
  then all losses end to end); with fixed features there is no CNN to freeze, and a
  single stage trains ``L_rank + instance_weight * L_instance`` from the start.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from xmrbench.core.encoders.text_cnn import ResidualTextCNN
from xmrbench.core.losses.instance import SharedInstanceClassifier
from xmrbench.core.models.base import InputDims, RetrievalModel, TextBatch, TrainBatch
from xmrbench.core.models.vsrn import caption_image_index
from xmrbench.core.sim.cosine import l2norm
from xmrbench.params import Params


def _head(in_dim: int, embed_dim: int, dropout: float) -> nn.Sequential:
    """FC -> BN -> ReLU -> dropout -> FC: ``(B, in_dim) -> (B, embed_dim)``."""
    return nn.Sequential(
        nn.Linear(in_dim, embed_dim),
        nn.BatchNorm1d(embed_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(embed_dim, embed_dim),
    )


class DPC(RetrievalModel):
    """Dual-path embedding with a shared instance classifier; see the module docstring."""

    class Params(Params):
        embed_dim: int = Field(2048, ge=1)  # f_v, f_t (2048 in the paper)
        word_dim: int = Field(300, ge=1)  # word vectors (word2vec's 300 in the paper)
        text_channels: int = Field(512, ge=1)  # width of the residual text CNN
        text_blocks: int = Field(4, ge=0)  # residual blocks of width-2 convolutions
        dropout: float = Field(0.5, ge=0, lt=1)
        instance_weight: float = Field(1.0, ge=0)  # weight of L_v + L_t; 0: ranking loss only
        image_input: Literal["global", "mean_regions"] = "global"
        text_input: Literal["tokens"] = "tokens"

    params: Params

    def __init__(self, params: DPC.Params, dims: InputDims):
        super().__init__(params, dims)
        self.img_path = _head(dims.image_dim, params.embed_dim, params.dropout)
        self.txt_cnn = ResidualTextCNN(
            dims.vocab_size, word_dim=params.word_dim, channels=params.text_channels, blocks=params.text_blocks
        )
        self.txt_path = _head(params.text_channels, params.embed_dim, params.dropout)
        # W_share is sized by the training split: built by prepare_training, or from a
        # stored state dict when a trained model is loaded for evaluation.
        self.instance: SharedInstanceClassifier | None = None
        self.register_load_state_dict_pre_hook(self._build_instance_from_state)

    def prepare_training(self, split: Any) -> None:
        """Build ``W_share`` with one class per training image (``split.n_images``)."""
        if self.params.instance_weight > 0:
            self.instance = SharedInstanceClassifier(self.params.embed_dim, int(split.n_images))

    def _build_instance_from_state(self, module, state_dict, prefix, *args) -> None:
        key = f"{prefix}instance.fc.weight"
        if self.instance is None and key in state_dict:
            n_classes, dim = state_dict[key].shape
            device = self.img_path[0].weight.device
            self.instance = SharedInstanceClassifier(int(dim), int(n_classes)).to(device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, D_in)`` -> ``f_v (B, D)`` (not normalised; see ``similarity``)."""
        return self.img_path(images)

    def encode_texts(self, text: TextBatch) -> torch.Tensor:
        """Token ids -> ``f_t (B, D)`` (not normalised)."""
        return self.txt_path(self.txt_cnn(text.tokens, text.lengths))

    def word_embedding(self) -> nn.Embedding:
        """The caption encoder's token embedding (pretrained word vectors initialise it)."""
        return self.txt_cnn.embed

    def similarity(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(N_img, N_txt)``."""
        return l2norm(img_emb) @ l2norm(txt_emb).t()

    def pair_scores(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Cosine of aligned pairs ``(P, D)``, ``(P, D)`` -> ``(P,)``."""
        return (l2norm(img_emb) * l2norm(txt_emb)).sum(-1)

    def auxiliary_loss(self, batch: TrainBatch, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """``instance_weight * (L_v + L_t)`` (0-d). ``batch.image_ids (B_img,)``: each batch image's
        index in the training split, its class; a caption's class is its image's."""
        if self.params.instance_weight == 0:
            return img_emb.new_zeros(())
        if self.instance is None:
            raise RuntimeError("DPC.prepare_training(train_split) must run before training (it sizes W_share)")
        img_classes = batch.image_ids.to(img_emb.device)
        txt_classes = img_classes[caption_image_index(batch.labels).to(img_emb.device)]
        return self.params.instance_weight * self.instance(img_emb, txt_emb, img_classes, txt_classes)
