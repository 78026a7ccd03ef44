"""Region-phrase distances for image-sentence retrieval (two-branch paper, Sec. 5.6, Eq. 8).

The weighted distance of an image ``x`` and a sentence ``y`` is

    D(x, y) = (1 - alpha) d(x, y) + alpha d_rp(x, y),

``d`` the image-sentence model's distance and ``d_rp`` the mean, over the sentence's
phrases, of the distance from each phrase to its best-matching region of the image,
both from the region-phrase model (the paper's best augmented embedding network of
Table 1). The paper finds alpha = 0.2 best.

:func:`region_phrase_distances` computes ``d_rp`` for every image and caption of a split
whose ``extras["entities"]`` holds the phrases and the region proposals: every phrase of
every caption is encoded once, the proposals of one image at a time, and the distances of
a phrase to an image's proposals are reduced by their minimum. A caption without
phrases has no ``d_rp`` (NaN); :func:`fuse` then keeps its image-sentence distance alone.
An image without proposals has an infinite ``d_rp`` to every caption with phrases.

Both networks L2-normalise their embeddings, so a distance is ``sqrt(2 - 2 s)`` of the
cosine similarity ``s`` they score by (:func:`cosine_distance`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from xmrbench.errors import DataError


def cosine_distance(sims: Tensor) -> Tensor:
    """Euclidean distance of unit vectors from their cosine similarity: ``sqrt(2 - 2 s)``."""
    return torch.sqrt((2.0 - 2.0 * sims).clamp_min(0.0))


@torch.no_grad()
def region_phrase_distances(model: Any, split: Any, *, device: torch.device, batch_size: int = 256) -> Tensor:
    """``d_rp (N_images, N_captions)`` of the prepared ``split`` (module docstring), float32 on the CPU."""
    ents = split.split.extras.get("entities")
    if ents is None:
        raise DataError(f"split {split.name!r} has no phrase-region annotations (extras 'entities'); the "
                        "region-phrase distance needs them")
    texts, owner = [], []
    for caption, phrases in enumerate(ents.phrases):
        for phrase in phrases:
            texts.append(phrase.text(ents.captions[caption]))
            owner.append(caption)
    n_img, n_cap = ents.n_images, len(ents.captions)
    out = torch.full((n_img, n_cap), float("nan"))
    if not texts:
        return out
    was_training = model.training
    model.eval()
    try:
        phr = torch.cat([model.encode_texts(split.strings_batch(texts[s:s + batch_size]).to(device))
                         for s in range(0, len(texts), batch_size)]).float()
        owner_t = torch.tensor(owner)
        counts = torch.bincount(owner_t, minlength=n_cap).float()
        has = counts > 0
        for image in range(n_img):
            _, feats = ents.proposals(image)
            if not len(feats):
                out[image, has] = float("inf")
                continue
            regions = torch.cat([model.encode_images(torch.tensor(feats[s:s + batch_size]).to(device))
                                 for s in range(0, len(feats), batch_size)]).float()
            best = torch.cdist(phr, regions).min(1).values.cpu()  # (Q,) each phrase's nearest region
            sums = torch.zeros(n_cap).index_add_(0, owner_t, best)
            out[image, has] = sums[has] / counts[has]
    finally:
        model.train(was_training)
    return out


def fuse(sentence_sims: Tensor, d_rp: Tensor, alpha: float) -> Tensor:
    """Similarities ``-D`` of Eq. 8 from the image-sentence model's cosine similarities and
    ``d_rp`` (same shape); where ``d_rp`` is NaN (a caption without phrases) ``-d`` alone."""
    d = cosine_distance(sentence_sims.float().cpu())
    fused = (1.0 - alpha) * d + alpha * d_rp
    return -torch.where(torch.isnan(d_rp), d, fused)
