"""The instance loss of DPC (Zheng et al., "Dual-Path Convolutional Image-Text
Embeddings with Instance Loss", 2017/2020, Section 3.3).

Every training image together with its captions is one class; a classifier
``W_share`` *shared by both modalities* predicts that class from the image
embedding and from each caption embedding::

    P_v = softmax(W_share f_v)      L_v = -log P_v(c)        (visual instance loss)
    P_t = softmax(W_share f_t)      L_t = -log P_t(c)        (textual instance loss)
    L_instance = L_v + L_t

Sharing ``W_share`` pulls an image and its captions towards the same class vector,
which aligns the two modalities before (and while) the ranking loss orders them.

The classifier belongs to the model (its size is the number of training images);
this module computes the loss from its scores. It is not a registered retrieval
loss: it needs each item's *global* class, which the engine gives to models through
``TrainBatch.image_ids`` of ``auxiliary_loss``, not to losses.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "sum"]


def instance_loss(
    img_logits: Tensor,
    txt_logits: Tensor,
    img_classes: Tensor,
    txt_classes: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """``L_v + L_t`` (0-d) from class scores ``img_logits (B_img, C)``, ``txt_logits (B_txt, C)``
    and class ids ``img_classes (B_img,)``, ``txt_classes (B_txt,)`` in ``[0, C)``.

    ``reduction="mean"`` averages each modality's cross-entropy over its items before
    adding the two (an image batch and a caption batch may differ in size); ``"sum"``
    adds every item's term.
    """
    for name, logits, classes in (("img", img_logits, img_classes), ("txt", txt_logits, txt_classes)):
        if logits.dim() != 2 or classes.dim() != 1 or logits.shape[0] != classes.shape[0]:
            raise ValueError(
                f"{name}_logits must be (B, C) and {name}_classes (B,); "
                f"got {tuple(logits.shape)} and {tuple(classes.shape)}"
            )
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= logits.shape[1]):
            raise ValueError(f"{name}_classes must lie in [0, {logits.shape[1]}); got {classes.min()}..{classes.max()}")
    if img_logits.shape[1] != txt_logits.shape[1]:
        raise ValueError(f"the two modalities have different class counts: {img_logits.shape[1]} vs {txt_logits.shape[1]}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}")
    total = img_logits.new_zeros(())
    for logits, classes in ((img_logits, img_classes), (txt_logits, txt_classes)):
        if classes.numel():
            total = total + F.cross_entropy(logits, classes.to(logits.device), reduction=reduction)
    return total


class SharedInstanceClassifier(torch.nn.Module):
    """``W_share``: one linear classifier over ``n_classes`` instances for both modalities,
    and the instance loss of embeddings ``img_emb (B_img, D)``, ``txt_emb (B_txt, D)``."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(dim, n_classes, bias=False)

    @property
    def n_classes(self) -> int:
        return self.fc.out_features

    def forward(
        self, img_emb: Tensor, txt_emb: Tensor, img_classes: Tensor, txt_classes: Tensor, *, reduction: Reduction = "mean"
    ) -> Tensor:
        """``L_v + L_t`` (0-d) of the embeddings' class scores under the shared weight."""
        return instance_loss(self.fc(img_emb), self.fc(txt_emb), img_classes, txt_classes, reduction=reduction)
