"""Miners: derived artifacts computed from a trained model, for a later training stage.

A miner takes a trained model (an earlier stage's selected weights, in eval mode)
and a prepared split and returns a dict of tensors (the artifact). The runner
(``runner/stages.py``) stores it under a content hash of (source run, miner, its
parameters, its version), computes it once and hands it to every cell that names
it, as ``StepContext.artifacts[name]`` of the cell's training method.

Registered miners:

- ``hardest_negatives``: AOQ's offline candidate lists. Over the whole training
  split, for every image the ``k`` most similar captions of other images, and for
  every caption the ``k`` most similar other images, by the model's similarity
  (``{"i2t": (N_img, k), "t2i": (N_txt, k)}``, most similar first, ties by index).
- ``offline_candidates``: the same lists at the widths of the authors' release
  (``texts`` = 2,000 captions per image, ``images`` = 400 images per caption, each
  clipped to the negatives a split has: ``N_txt`` less the captions of one image, and
  ``N_img - 1``), mined in ONE pass over tiles of the matrix with bounded memory
  (:func:`~xmrbench.core.mining.mine_candidates`):
  ``{"i2t": int32 (N_img, K_t), "t2i": int32 (N_txt, K_i)}``, most similar first, ties
  by index. :mod:`xmrbench.data.candidates` reads and writes them as the release's
  ``.npy`` files (docs/formats/candidates.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from xmrbench.core.mining import MINING_BLOCK_IMAGES, hardest_captions, hardest_images, mine_candidates
from xmrbench.core.models.base import RetrievalModel
from xmrbench.engine.evaluate import encode, similarity_matrix
from xmrbench.engine.inputs import PreparedSplit
from xmrbench.params import Params
from xmrbench.registry import Registry


class Miner:
    """Base class: subclasses set ``Params`` and ``version`` and implement ``mine``."""

    Params: ClassVar[type[Params]] = Params
    #: bump when the output for the same inputs changes; part of the artifact's hash
    version: ClassVar[int] = 1
    #: the split it reads (of the source cell's dataset)
    split: ClassVar[str] = "train"

    def __init__(self, params: Params):
        self.params = params

    def mine(self, model: RetrievalModel, split: PreparedSplit, *, device: torch.device, batch_size: int,
             block_images: int) -> dict[str, Any]:
        raise NotImplementedError


class HardestNegatives(Miner):
    """Top-``k`` negatives of every image and every caption of the training split."""

    class Params(Params):
        k: int = Field(50, ge=1)  # candidates per query

    def mine(self, model: RetrievalModel, split: PreparedSplit, *, device: torch.device, batch_size: int,
             block_images: int) -> dict[str, Any]:
        k = self.params.k  # type: ignore[attr-defined]
        enc = encode(model, split, device=device, batch_size=batch_size)
        caption_image = torch.from_numpy(split.caption_image()).long()
        n_img, n_txt = split.n_images, split.n_captions
        i2t, t2i = [], []
        for start in range(0, n_img, block_images):  # image rows: captions of other images
            rows = slice(start, min(start + block_images, n_img))
            sims = similarity_matrix(model, enc, block_images=block_images, img_slice=rows)
            i2t.append(hardest_captions(sims, torch.arange(rows.start, rows.stop), caption_image, k))
        step = max(1, block_images * split.captions_per_image)
        for start in range(0, n_txt, step):  # caption columns: other images
            cols = slice(start, min(start + step, n_txt))
            sims = similarity_matrix(model, enc, block_images=block_images, txt_slice=cols)
            t2i.append(hardest_images(sims, torch.arange(cols.start, cols.stop), caption_image, k))
        return {"i2t": torch.cat(i2t), "t2i": torch.cat(t2i)}


class OfflineCandidates(Miner):
    """AOQ's candidate lists at the release widths, in one pass with bounded memory.

    The tiles are ``min(block_images, MINING_BLOCK_IMAGES)`` images by
    ``MINING_CHUNK_CAPTIONS`` captions, so the memory stays within :func:`~xmrbench.core.mining.mining_memory_bound` whatever the
    evaluation's block size.
    """

    class Params(Params):
        texts: int = Field(2000, ge=1)  # captions per image (clipped to the captions of other images)
        images: int = Field(400, ge=1)  # images per caption (clipped to the other images)

    def mine(self, model: RetrievalModel, split: PreparedSplit, *, device: torch.device, batch_size: int,
             block_images: int) -> dict[str, Any]:
        caption_image = torch.from_numpy(split.caption_image()).long()
        n_img, n_txt = split.n_images, split.n_captions
        most_own = int(torch.bincount(caption_image, minlength=n_img).max()) if n_txt else 0
        k_texts = min(self.params.texts, n_txt - most_own)  # type: ignore[attr-defined]
        k_images = min(self.params.images, n_img - 1)  # type: ignore[attr-defined]
        enc = encode(model, split, device=device, batch_size=batch_size)
        i2t, t2i = mine_candidates(
            lambda rows, cols: similarity_matrix(model, enc, block_images=block_images, img_slice=rows,
                                                 txt_slice=cols),
            n_images=n_img, caption_image=caption_image, k_texts=k_texts, k_images=k_images,
            block_images=max(1, min(block_images, MINING_BLOCK_IMAGES)),
        )
        return {"i2t": i2t, "t2i": t2i}


MINERS: Registry[type[Miner]] = Registry(
    "miner",
    {
        "hardest_negatives": HardestNegatives,
        "offline_candidates": OfflineCandidates,
    },
)
