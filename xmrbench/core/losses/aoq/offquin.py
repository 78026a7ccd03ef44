"""Offline quintuplet loss: OffTri plus two derived offline negative pairs that share no
element with the positive pair (AOQ Eq. 4, "OffQuin")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from xmrbench.core.losses.aoq.online import online as online_loss
from xmrbench.core.losses.base import hinge

if TYPE_CHECKING:
    from xmrbench.core.losses.aoq.scores import QuintupletScores


def offquin(s: QuintupletScores, *, gamma1: float, gamma2: float, online: bool = True) -> Tensor:
    """Per positive pair ``(i, t)``, the image-anchored line plus the text-anchored one::

        [g1 - S(i,t) + S(i,t_on)]_+ + [g2 - S(i,t) + S(i,t_off)]_+ + [g2 - S(i,t) + S(i_off,t_off)]_+
      + [g1 - S(i,t) + S(i_on,t)]_+ + [g2 - S(i,t) + S(i_off,t)]_+ + [g2 - S(i,t) + S(i~_off,t~_off)]_+

    with ``S(i_off, t_off) = s.pair_a`` and ``S(i~_off, t~_off) = s.pair_b``.
    ``online=False`` drops the two ``g1`` hinges (the paper's "OnlyOffline" ablation).
    Needs ``t_off``, ``i_off``, ``pair_a``, ``pair_b``. Returns ``(P,)``.
    """
    pos, t_off, i_off, pair_a, pair_b = s.need("offquin", "pos", "t_off", "i_off", "pair_a", "pair_b")
    loss = (
        hinge(gamma2 - pos + t_off)
        + hinge(gamma2 - pos + pair_a)
        + hinge(gamma2 - pos + i_off)
        + hinge(gamma2 - pos + pair_b)
    )
    return loss + online_loss(s, gamma1=gamma1) if online else loss
