"""Phrase localization: is a correct region among a phrase's top-K proposals?

A phrase's proposals are ranked by the model's score; a proposal is *correct* when
it overlaps a ground-truth box of the phrase with IoU >= 0.5 (the data layer
computes that). The phrase counts as found at K when a correct proposal ranks in the
top K. Ties count against it, as everywhere in xmrbench: among proposals of equal
score, the incorrect ones rank first, so a constant scorer finds nothing it could
not find by its ranking alone. A phrase without a correct proposal is a miss at
every K (the proposals' upper bound, reported beside the recalls).
"""

from __future__ import annotations

import torch


def correct_rank(scores: torch.Tensor, correct: torch.Tensor) -> int | None:
    """1-based pessimistic rank of the best-scored correct proposal, or None without one.

    ``scores (P,)``, ``correct (P,)`` bool.
    """
    if scores.shape != correct.shape or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)} and correct {tuple(correct.shape)} must be equal 1-D shapes")
    if not bool(correct.any()):
        return None
    best = scores[correct].max()
    return int((scores > best).sum()) + int(((scores == best) & ~correct).sum()) + 1
