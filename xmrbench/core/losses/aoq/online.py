"""Online triplet loss on the hardest in-batch negatives (AOQ Eq. 2, as in VSE++)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from xmrbench.core.losses.base import hinge

if TYPE_CHECKING:
    from xmrbench.core.losses.aoq.scores import QuintupletScores


def online(s: QuintupletScores, *, gamma1: float) -> Tensor:
    """Per positive pair ``(i, t)``::

        [g1 - S(i,t) + S(i,t_on)]_+ + [g1 - S(i,t) + S(i_on,t)]_+

    ``s`` holds ``(P,)`` scores (only ``pos``, ``t_on``, ``i_on`` are read); ``gamma1``
    is the margin (the paper uses 0.2). Returns ``(P,)``.
    """
    pos, t_on, i_on = s.need("online", "pos", "t_on", "i_on")
    return hinge(gamma1 - pos + t_on) + hinge(gamma1 - pos + i_on)
