"""ACMR's loss terms (the ACMR paper, Sec. 3.3-3.4, Eq. 1-8), as plain functions of
the projections, the classifiers' logits and the batch's labels.

Notation: a mini-batch holds ``n`` instances, image ``v_i`` and text ``t_i`` with label
vector ``y_i``; ``f_V(v)``, ``f_T(t)`` are the projections (``img_emb (B_img, D)``,
``txt_emb (B_txt, D)``). Labels enter as a *label matrix* ``(B, C)`` of 0/1 floats
(:func:`label_matrix`: one-hot rows for single class ids, the rows themselves for
multi-hot labels). Two items *share a label* when their rows have a common 1.

- **Intra-modal discrimination** (Eq. 2), :func:`imd_loss`: the cross-entropy of the
  label classifier on both modalities, ``-1/n sum_i y_i . (log p^(v_i) + log p^(t_i))``.
  With one label per item ``y_i`` is one-hot and this is the usual cross-entropy. With
  several labels the literal ``y_i . log p^`` adds one cross-entropy per label; xmrbench
  instead divides ``y_i`` by its number of labels, so the target is the normalised label
  distribution and an item with three labels weighs what an item with one does.
- **Inter-modal invariance** (Eq. 3-6), :func:`imi_loss`: triplets are drawn from the
  mini-batch by labels (Sec. 3.4.2; :func:`triplet_masks`): for an image anchor ``v_i``
  every text that shares a label with it is a positive ``t_j^+`` and every text that
  shares none is a negative ``t_k^-`` (never a text with a common label), and the same
  with a text anchor and image candidates. With the plain (not squared) l2 distance of
  Eq. 3, ``l2(v, t) = ||f_V(v) - f_T(t)||_2``, Eq. 4 sums over every triplet

      L_imi,V = sum_{i,j,k} l2(v_i, t_j^+) + lambda * max(0, margin - l2(v_i, t_k^-))

  Eq. 5 is the same with text anchors, and ``L_imi = L_imi,V + L_imi,T`` (Eq. 6). The
  paper writes the margin as ``mu`` (the symbol Algorithm 1 uses for the learning rate)
  and prints no value: here it is ``margin``. Summing over the triplets ``(i, j, k)``
  counts each positive distance once per negative of its anchor and each hinge once per
  positive, which :func:`imi_loss` computes from per-anchor counts in ``O(B^2)``.
  ``reduction="mean"`` divides each direction by its number of triplets instead.
- **Regularisation** (Eq. 7), :func:`reg_loss`: the sum of the Frobenius norms (not
  squared) of the projectors' weight matrices.
- **Embedding loss** (Eq. 8): ``L_emb = alpha L_imi + beta L_imd + L_reg``, assembled by
  the training method (:mod:`xmrbench.engine.acmr_method`), which may leave a term out.
- **Adversarial loss** (Eq. 1), :func:`adversarial_loss`: the cross-entropy of the
  modality classifier, ``-1/n sum_i m_i . (log D(v_i) + log(1 - D(t_i)))``, with the
  image's target ``01`` and the text's ``10`` (``docs/acmr.md#the-losses``).

Eq. 1 and 2 average over the ``n`` instances of the batch. When the two modalities'
batches differ in size, each modality's sum is divided by its own count (with one text
per image, the two agree).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xmrbench.core.models.acmr import IMAGE_MODALITY, TEXT_MODALITY
from xmrbench.errors import DataError

Reduction = Literal["sum", "mean"]


def label_matrix(labels: Tensor, n_classes: int) -> Tensor:
    """``labels`` as a ``(B, n_classes)`` float 0/1 matrix: class ids ``(B,)`` (integers
    in ``[0, n_classes)``) become one-hot rows; a multi-hot ``(B, n_classes)`` is checked
    and converted. Raises ``DataError`` for an id out of range, a wrong number of
    columns, values other than 0/1, or a multi-hot row without any label."""
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise DataError(f"class ids must be integers, got dtype {labels.dtype}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            bad = int(labels[(labels < 0) | (labels >= n_classes)][0])
            raise DataError(f"class id {bad} is outside the {n_classes} classes of the training labels")
        return F.one_hot(labels.long(), n_classes).float()
    if labels.ndim == 2:
        if labels.shape[1] != n_classes:
            raise DataError(f"multi-hot labels have {labels.shape[1]} columns for {n_classes} classes")
        out = labels.float()
        if not bool(((out == 0) | (out == 1)).all()):
            raise DataError("multi-hot labels must hold only 0/1 values")
        if len(out) and not bool((out.sum(1) > 0).all()):
            raise DataError("a multi-hot label row has no label set")
        return out
    raise DataError(f"labels must be class ids (B,) or multi-hot (B, C), got shape {tuple(labels.shape)}")


def triplet_masks(img_labels: Tensor, txt_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Which batch texts are positives and which negatives of each batch image.

    ``img_labels (B_img, C)``, ``txt_labels (B_txt, C)``: label matrices
    (:func:`label_matrix`). Returns ``pos, neg (B_img, B_txt)`` bool: ``pos[i, j]`` when
    image ``i`` and text ``j`` share a label, ``neg = ~pos``. For text anchors, transpose.
    """
    shared = img_labels @ txt_labels.t()  # counts of common labels: exact small integers
    pos = shared > 0.5
    return pos, ~pos


def _anchored(dist: Tensor, pos: Tensor, neg: Tensor, *, lam: float, margin: float,
              reduction: Reduction) -> Tensor:
    """Eq. 4 (rows are anchors): ``dist, pos, neg (B_anchor, B_cand)``."""
    posf, negf = pos.to(dist.dtype), neg.to(dist.dtype)
    n_pos, n_neg = posf.sum(1), negf.sum(1)  # (B_anchor,)
    pull = (dist * posf).sum(1) * n_neg  # each positive once per negative of its anchor
    push = (F.relu(margin - dist) * negf).sum(1) * n_pos  # each hinge once per positive
    total = (pull + lam * push).sum()
    if reduction == "sum":
        return total
    n_triplets = (n_pos * n_neg).sum()
    return total / n_triplets.clamp_min(1.0)


def pairwise_l2(img_emb: Tensor, txt_emb: Tensor) -> Tensor:
    """``(B_img, B_txt)`` plain Euclidean distances of Eq. 3 (zero distance: zero gradient)."""
    return torch.linalg.vector_norm(img_emb[:, None, :] - txt_emb[None, :, :], dim=-1)


def imi_loss(img_emb: Tensor, txt_emb: Tensor, img_labels: Tensor, txt_labels: Tensor, *, lam: float,
             margin: float, reduction: Reduction = "sum") -> Tensor:
    """``L_imi`` (Eq. 6) of a batch: image-anchored (Eq. 4) plus text-anchored (Eq. 5)
    triplet terms over every in-batch triplet (:func:`triplet_masks`).

    ``img_emb (B_img, D)``, ``txt_emb (B_txt, D)``; ``img_labels (B_img, C)``,
    ``txt_labels (B_txt, C)`` label matrices. ``lam`` weights the hinges, ``margin`` is
    Eq. 4's ``mu``; ``reduction`` "sum" (the paper's) or "mean" (each direction divided by
    its number of triplets). An anchor without a positive or without a negative has no
    triplet and adds nothing. Returns a 0-d tensor.
    """
    pos, neg = triplet_masks(img_labels, txt_labels)
    dist = pairwise_l2(img_emb, txt_emb)
    kw = dict(lam=lam, margin=margin, reduction=reduction)
    return _anchored(dist, pos, neg, **kw) + _anchored(dist.t(), pos.t(), neg.t(), **kw)


def imd_loss(img_logits: Tensor, txt_logits: Tensor, img_labels: Tensor, txt_labels: Tensor) -> Tensor:
    """``L_imd`` (Eq. 2): the label classifier's cross-entropy on the images plus that on
    the texts, each averaged over its items.

    ``img_logits (B_img, C)``, ``txt_logits (B_txt, C)`` (softmax gives ``p^``); label
    matrices ``(B, C)``, whose rows are normalised to sum to 1 (the module docstring's
    multi-label reading). Returns a 0-d tensor.
    """
    def term(logits: Tensor, labels: Tensor) -> Tensor:
        labels = labels.to(logits.dtype)
        target = labels / labels.sum(1, keepdim=True).clamp_min(1.0)
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()

    return term(img_logits, img_labels) + term(txt_logits, txt_labels)


def reg_loss(weights: Iterable[Tensor]) -> Tensor:
    """``L_reg`` (Eq. 7): the sum of the Frobenius norms (not squared) of ``weights``."""
    norms = [torch.linalg.matrix_norm(w) for w in weights]
    if not norms:
        raise ValueError("L_reg needs at least one weight matrix")
    return torch.stack(norms).sum()


def adversarial_loss(img_logits: Tensor, txt_logits: Tensor) -> Tensor:
    """``L_adv`` (Eq. 1): the modality classifier's cross-entropy, images with target
    ``01`` and texts with ``10``, each modality averaged over its items.

    ``img_logits (B_img, 2)``, ``txt_logits (B_txt, 2)`` (softmax gives ``D``). Returns a
    0-d tensor."""
    img_target = torch.full((img_logits.shape[0],), IMAGE_MODALITY, dtype=torch.long, device=img_logits.device)
    txt_target = torch.full((txt_logits.shape[0],), TEXT_MODALITY, dtype=torch.long, device=txt_logits.device)
    return F.cross_entropy(img_logits, img_target) + F.cross_entropy(txt_logits, txt_target)
