"""Hard-negative mining kernels: from a block of similarities to candidate lists.

Offline mining (AOQ) ranks, for every training image, the captions of *other*
images by a trained model's similarity, and for every caption the other images;
the top ``k`` of each list are the candidates a later training round samples its
negatives from. The kernels here work on one block of the similarity matrix at a
time, so that a whole training set (29,000 images x 145,000 captions on Flickr30K)
never needs its full matrix in memory.

Ties are broken by index (the lower index first), so the lists do not depend on
the order in which a top-k implementation visits equal scores.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _topk_by_index(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of each row, ties broken by the lower index.

    A stable descending sort ranks equal scores by their position.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def hardest_captions(sims: Tensor, image_ids: Tensor, caption_image: Tensor, k: int) -> Tensor:
    """For each image row of ``sims (B_img, N_txt)``: the ``k`` most similar captions of
    other images, most similar first -> ``(B_img, k)`` caption indices.

    ``image_ids (B_img,)`` are the rows' image indices; ``caption_image (N_txt,)`` the
    image of every caption. ``k`` must not exceed the captions of other images.
    """
    own = caption_image[None, :].to(image_ids.device) == image_ids[:, None]
    masked = sims.masked_fill(own.to(sims.device), float("-inf"))
    _check_k(k, int((~own).sum(1).min()) if len(own) else k, "captions of other images")
    return _topk_by_index(masked, k)


def hardest_images(sims: Tensor, caption_ids: Tensor, caption_image: Tensor, k: int) -> Tensor:
    """For each caption column of ``sims (N_img, B_txt)``: the ``k`` most similar images
    other than its own, most similar first -> ``(B_txt, k)`` image indices.

    ``caption_ids (B_txt,)`` are the columns' caption indices.
    """
    own_image = caption_image[caption_ids]
    n_img = sims.shape[0]
    own = torch.arange(n_img, device=sims.device)[None, :] == own_image.to(sims.device)[:, None]
    masked = sims.t().masked_fill(own, float("-inf"))
    _check_k(k, n_img - 1, "other images")
    return _topk_by_index(masked, k)


def _check_k(k: int, available: int, what: str) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > available:
        raise ValueError(f"k={k} exceeds the {available} {what}")
