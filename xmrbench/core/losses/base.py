"""Shared pieces of the retrieval losses: the base class, input checks, positive
masks, hinge, per-anchor aggregation and reduction.

Every loss is called the same way::

    loss = SomeLoss(SomeLoss.Params(margin=0.2))
    value = loss(img_emb, txt_emb, sims=None, labels=None)   # 0-d tensor

Shapes (rows are queries): ``img_emb (B_img, D)``, ``txt_emb (B_txt, D)``,
``sims (B_img, B_txt)``. ``labels`` is ``None`` (then ``B_img == B_txt`` and the
positives are the diagonal) or a pair ``(img_labels (B_img,), txt_labels (B_txt,))``
of integer ids: image ``i`` and text ``j`` match iff ``img_labels[i] == txt_labels[j]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from xmrbench.params import Params

Reduction = Literal["sum", "mean"]
Labels = tuple[Tensor | Sequence[int], Tensor | Sequence[int]]


class LossParams(Params):
    """Parameters every loss shares.

    ``reduction="sum"`` is the total over the batch, as the papers write it;
    ``"mean"`` divides that total by the number of positive (image, text) pairs.
    """

    reduction: Reduction = "sum"


class TripletParams(LossParams):
    """Parameters of the hinge triplet losses (VSE++'s hardest negative, the sum of hinges).

    ``positives`` says which batch items are positives of an anchor:

    - ``"image"``: every caption of the anchor's image (and, for a caption, its image);
      two captions of one image in a batch are never each other's image's negatives;
    - ``"pair"``: the released VSE++ / SCAN / VSRN code's rule: the batch is a list of
      (image, caption) pairs, an image repeated once per caption of it, and only a
      pair's own partner is its positive. Another caption of the same image in the
      batch counts as a negative, and a repeated image is an anchor once per pair.
    """

    hashed_when_set: ClassVar[tuple[str, ...]] = ("positives",)
    positives: Literal["image", "pair"] = "image"


def per_pair(img_emb: Tensor, txt_emb: Tensor, sims: Tensor | None, labels: Labels | None,
             positives: str) -> tuple[Tensor, Tensor | None, Labels | None]:
    """With ``positives="pair"``: the batch as (image, caption) pairs, one row per caption:
    ``img_emb`` and ``sims`` rows repeated by each caption's image, labels dropped (the
    diagonal is positive). Otherwise the inputs unchanged."""
    if positives != "pair" or labels is None:
        return img_emb, sims, labels
    rows = torch.as_tensor(labels[1], device=img_emb.device).long()
    full = resolve_sims(img_emb, txt_emb, sims)
    return img_emb[rows], full[rows], None


class RetrievalLoss(torch.nn.Module):
    """Base class of the image-text losses.

    Subclasses define a nested ``Params`` (a :class:`LossParams` subclass holding
    their hyper-parameters and defaults) and ``forward``. A loss keeps no state
    besides its parameters: two calls with the same inputs (and, for sampling
    losses, the same RNG state) give the same value.
    """

    Params: ClassVar[type[LossParams]] = LossParams
    #: True for a loss that scores only the pairs it samples: the caller passes
    #: ``pair_scores(img_idx, txt_idx) -> (P,)`` instead of the full ``sims``
    scores_pairs: ClassVar[bool] = False

    def __init__(self, params: LossParams):
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{type(self).__name__} expects {self.Params.__qualname__}, "
                f"got {type(params).__name__}"
            )
        self.params = params

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        *,
        sims: Tensor | None = None,
        labels: Labels | None = None,
    ) -> Tensor:
        """Return the loss of one batch as a 0-d tensor."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())


def check_embeddings(img_emb: Tensor, txt_emb: Tensor) -> None:
    """Raise ``ValueError`` unless ``img_emb (B_img, D)`` and ``txt_emb (B_txt, D)`` share D."""
    if img_emb.dim() != 2 or txt_emb.dim() != 2:
        raise ValueError(
            f"img_emb and txt_emb must be 2-D (batch, dim); got {tuple(img_emb.shape)} "
            f"and {tuple(txt_emb.shape)}"
        )
    if img_emb.shape[1] != txt_emb.shape[1]:
        raise ValueError(
            "img_emb and txt_emb differ in embedding size: "
            f"{img_emb.shape[1]} vs {txt_emb.shape[1]}"
        )


def check_sims(sims: Tensor, n_img: int, n_txt: int) -> None:
    """Raise ``ValueError`` unless ``sims`` has shape ``(n_img, n_txt)``."""
    if sims.dim() != 2 or tuple(sims.shape) != (n_img, n_txt):
        raise ValueError(
            f"sims must have shape (B_img, B_txt) = ({n_img}, {n_txt}); got {tuple(sims.shape)}"
        )


def resolve_sims(img_emb: Tensor, txt_emb: Tensor, sims: Tensor | None) -> Tensor:
    """Return the ``(B_img, B_txt)`` similarity matrix of a batch.

    A given ``sims`` is used as is (models whose score is not a dot product pass their
    own), and then the embeddings only supply the batch sizes through their first
    dimension. Otherwise ``sims = img_emb @ txt_emb.T``; the embeddings are expected to
    be L2-normalised already, the loss does not normalise them.
    """
    if sims is None:
        check_embeddings(img_emb, txt_emb)
        return img_emb @ txt_emb.T
    check_sims(sims, img_emb.shape[0], txt_emb.shape[0])
    return sims


def positive_mask(
    labels: Labels | None, n_img: int, n_txt: int, *, device: torch.device | str | None = None
) -> Tensor:
    """Boolean ``(n_img, n_txt)`` mask of the positive (image, text) pairs.

    ``labels=None`` means pair ``i`` is (image ``i``, text ``i``): the mask is the
    identity and ``n_img`` must equal ``n_txt``. Otherwise ``labels`` is
    ``(img_labels (n_img,), txt_labels (n_txt,))`` of integer ids and
    ``mask[i, j] = img_labels[i] == txt_labels[j]``.
    """
    if labels is None:
        if n_img != n_txt:
            raise ValueError(
                f"labels=None pairs image i with text i and needs B_img == B_txt; "
                f"got {n_img} images and {n_txt} texts"
            )
        return torch.eye(n_img, dtype=torch.bool, device=device)
    if not isinstance(labels, (tuple, list)) or len(labels) != 2:
        raise ValueError("labels must be None or a pair (img_labels, txt_labels)")
    img_labels = torch.as_tensor(labels[0], device=device)
    txt_labels = torch.as_tensor(labels[1], device=device)
    for name, ids, n in (("img_labels", img_labels, n_img), ("txt_labels", txt_labels, n_txt)):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer ids; got dtype {ids.dtype}")
        if ids.dim() != 1 or ids.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n},); got {tuple(ids.shape)}")
    return img_labels[:, None] == txt_labels[None, :]


def positive_pairs(pos_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column indices ``(n_pos,)`` of the true entries of a boolean mask, row-major."""
    rows, cols = pos_mask.nonzero(as_tuple=True)
    return rows, cols


def neighbour_mask(pos_mask: Tensor) -> Tensor:
    """Within-modality neighbours of the rows of ``pos_mask``: ``(n, n)`` boolean.

    Rows ``a`` and ``b`` (``a != b``) are neighbours when they share a positive
    column. Pass ``pos_mask`` for image neighbours (images described by the same
    text) and ``pos_mask.T`` for text neighbours (texts describing the same image).
    """
    shared = pos_mask.to(torch.float32) @ pos_mask.to(torch.float32).T
    eye = torch.eye(pos_mask.shape[0], dtype=torch.bool, device=pos_mask.device)
    return (shared > 0) & ~eye


def hinge(x: Tensor) -> Tensor:
    """``[x]_+ = max(0, x)``; the gradient at exactly 0 is 0."""
    return torch.relu(x)


def triplet_violations(
    scores: Tensor, rows: Tensor, cols: Tensor, neg_mask: Tensor, margin: float
) -> Tensor:
    """Hinge values of all triplets built on the (anchor, positive) pairs ``(rows, cols)``.

    ``scores (A, C)`` are "higher is closer" scores between anchors and candidates
    (similarities, or negated distances), ``neg_mask (A, C)`` marks the negatives of
    each anchor. Returns ``(n_pairs, C)``: entry ``[p, c]`` is
    ``[margin - scores[rows[p], cols[p]] + scores[rows[p], c]]_+`` if ``c`` is a
    negative of anchor ``rows[p]`` and 0 otherwise. Since every entry is >= 0, a row
    sum, max or top-k sum over it equals the same over the negatives alone.
    """
    pos_scores = scores[rows, cols]
    cand_scores = scores[rows]
    violations = hinge(margin - pos_scores[:, None] + cand_scores)
    return violations.masked_fill(~neg_mask[rows], 0.0)


def both_directions(
    img_emb: Tensor, txt_emb: Tensor, sims: Tensor | None, labels: Labels | None, margin: float
) -> tuple[Tensor, Tensor, int]:
    """Hinge values of every triplet of a batch, image-anchored and text-anchored.

    Returns ``(i2t (n_pos, B_txt), t2i (n_pos, B_img), n_pos)``: row ``p`` holds, for
    the ``p``-th positive pair, the violations by each negative text (resp. image).
    """
    sims = resolve_sims(img_emb, txt_emb, sims)
    pos_mask = positive_mask(labels, *sims.shape, device=sims.device)
    img_idx, txt_idx = positive_pairs(pos_mask)
    i2t = triplet_violations(sims, img_idx, txt_idx, ~pos_mask, margin)
    t2i = triplet_violations(sims.T, txt_idx, img_idx, ~pos_mask.T, margin)
    return i2t, t2i, img_idx.numel()


def sum_top_k(violations: Tensor, top_k: int | None) -> Tensor:
    """Per row, the sum of the ``top_k`` largest entries (all if ``None``): ``(n_pairs,)``."""
    if top_k is None or top_k >= violations.shape[1]:
        return violations.sum(dim=1)
    return violations.topk(top_k, dim=1).values.sum(dim=1)


def max_per_row(violations: Tensor) -> Tensor:
    """Per row, the largest entry (0 for an empty row): ``(n_pairs,)``."""
    if violations.shape[1] == 0:
        return violations.sum(dim=1)
    return violations.max(dim=1).values


def reduce_loss(total: Tensor, n_pos: int, reduction: Reduction) -> Tensor:
    """Apply the reduction to a 0-d batch total: ``"sum"`` keeps it, ``"mean"`` divides
    it by the number of positive pairs ``n_pos`` (a batch without positives stays 0)."""
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(n_pos, 1)
    raise ValueError(f"unknown reduction {reduction!r}")
