"""Evaluation: encode a split, score every image against every caption, compute metrics.

Always in eval mode (dropout off, batch-norm running statistics): evaluating in
train mode is the most common way peer numbers go wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.retrieval import all_finite, average_folds, i2t_ranks, retrieval_metrics, t2i_ranks
from xmrbench.core.metrics.sentence import sentence_metrics
from xmrbench.core.models.base import Padded, RetrievalModel, concat
from xmrbench.engine.inputs import PreparedSplit
from xmrbench.errors import TrainingError


@dataclass
class Encoded:
    img_emb: torch.Tensor | Padded
    txt_emb: torch.Tensor | Padded


@torch.no_grad()
def encode(model: RetrievalModel, split: PreparedSplit, *, device: torch.device, batch_size: int) -> Encoded:
    """Embeddings of every image and caption of ``split`` (kept on ``device``)."""
    was_training = model.training
    model.eval()
    try:
        imgs, txts = [], []
        for start in range(0, split.n_images, batch_size):
            index = np.arange(start, min(start + batch_size, split.n_images))
            imgs.append(model.encode_images(split.image_batch(index).to(device)))
        for start in range(0, split.n_captions, batch_size):
            index = np.arange(start, min(start + batch_size, split.n_captions))
            txts.append(model.encode_texts(split.text_batch(index).to(device)))
    finally:
        model.train(was_training)
    return Encoded(concat(imgs), concat(txts))


@torch.no_grad()
def similarity_matrix(
    model: RetrievalModel, enc: Encoded, *, block_images: int, img_slice: slice = slice(None), txt_slice: slice = slice(None)
) -> torch.Tensor:
    """``sims (N_img, N_txt)`` on the CPU, computed in blocks of ``block_images`` images."""
    was_training = model.training
    model.eval()
    try:
        img_emb, txt_emb = enc.img_emb[img_slice], enc.txt_emb[txt_slice]
        blocks = [
            model.similarity(img_emb[s : s + block_images], txt_emb).float().cpu()
            for s in range(0, img_emb.shape[0], block_images)
        ]
    finally:
        model.train(was_training)
    sims = torch.cat(blocks)
    if not all_finite(sims):
        raise TrainingError("the model produced NaN or inf similarities")
    return sims


def fold_similarities(
    model: RetrievalModel, split: PreparedSplit, enc: Encoded, *, folds: int, block_images: int
) -> list[torch.Tensor]:
    """The similarity matrix of each of ``folds`` consecutive folds of ``split``."""
    cpi = split.captions_per_image
    n = split.n_images
    if n % folds:
        raise TrainingError(f"split {split.name!r} has {n} images, not divisible into {folds} folds")
    size = n // folds
    return [
        similarity_matrix(
            model,
            enc,
            block_images=block_images,
            img_slice=slice(f * size, (f + 1) * size),
            txt_slice=slice(f * size * cpi, (f + 1) * size * cpi),
        )
        for f in range(folds)
    ]


def metrics_from_similarities(
    fold_sims: list[torch.Tensor], *, captions_per_image: int
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Metrics averaged over folds (rsum recomputed) and the 0-based per-query ranks."""
    per_fold = [retrieval_metrics(s, captions_per_image=captions_per_image) for s in fold_sims]
    metrics = per_fold[0] if len(per_fold) == 1 else average_folds(per_fold)
    ranks = {
        "i2t": torch.cat([i2t_ranks(s, captions_per_image=captions_per_image) for s in fold_sims]).tolist(),
        "t2i": torch.cat([t2i_ranks(s, captions_per_image=captions_per_image) for s in fold_sims]).tolist(),
    }
    return metrics, ranks


def evaluate_split(
    model: RetrievalModel,
    split: PreparedSplit,
    *,
    folds: int = 1,
    device: torch.device,
    batch_size: int = 256,
    block_images: int = 1000,
    sentence: bool = False,
    on_sims: Callable[[list[torch.Tensor]], None] | None = None,
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Metrics (averaged over ``folds`` consecutive folds) and 0-based per-query ranks;
    ``on_sims``, when given, receives the folds' similarity matrices."""
    enc = encode(model, split, device=device, batch_size=batch_size)
    fold_sims = fold_similarities(model, split, enc, folds=folds, block_images=block_images)
    if on_sims is not None:
        on_sims(fold_sims)
    metrics, ranks = metrics_from_similarities(fold_sims, captions_per_image=split.captions_per_image)
    if sentence:
        if isinstance(enc.txt_emb, Padded):
            raise TrainingError("sentence-to-sentence retrieval needs one embedding per caption")
        txt = enc.txt_emb.float().cpu()
        metrics.update(sentence_metrics(txt @ txt.t(), captions_per_image=split.captions_per_image))
    return metrics, ranks


def selection_score(metrics: dict[str, float], select_by: str) -> float:
    """The dev score used for model selection."""
    if select_by == "rsum":
        return metrics[K.RSUM]
    if select_by == "r1_r5":  # AOQ: R@1 + R@5 in both directions
        return metrics[K.I2T_R1] + metrics[K.I2T_R5] + metrics[K.T2I_R1] + metrics[K.T2I_R5]
    if select_by == "map":  # label-based retrieval (ACMR): the mean of both directions' mAP
        return metrics[K.AVG_MAP]
    if select_by == "phrase":  # phrase localization: R@1 + R@5 + R@10 of the phrases
        return metrics[K.PL_R1] + metrics[K.PL_R5] + metrics[K.PL_R10]
    raise ValueError(f"unknown selection metric {select_by!r}")
