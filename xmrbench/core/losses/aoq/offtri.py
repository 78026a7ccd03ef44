"""Online triplet loss plus a triplet on an offline hard negative per anchor
(AOQ Eq. 3, "OffTri")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from xmrbench.core.losses.aoq.online import online as online_loss
from xmrbench.core.losses.base import hinge

if TYPE_CHECKING:
    from xmrbench.core.losses.aoq.scores import QuintupletScores


def offtri(s: QuintupletScores, *, gamma1: float, gamma2: float, online: bool = True) -> Tensor:
    """Per positive pair ``(i, t)``::

        [g1 - S(i,t) + S(i,t_on)]_+ + [g2 - S(i,t) + S(i,t_off)]_+
      + [g1 - S(i,t) + S(i_on,t)]_+ + [g2 - S(i,t) + S(i_off,t)]_+

    ``gamma1`` is the online margin, ``gamma2`` the offline one (the paper: 0.2 and 0;
    the offline negatives are too close to the positive for a wide margin).
    ``online=False`` keeps only the two offline hinges. Needs ``t_off`` and ``i_off``.
    Returns ``(P,)``.
    """
    pos, t_off, i_off = s.need("offtri", "pos", "t_off", "i_off")
    loss = hinge(gamma2 - pos + t_off) + hinge(gamma2 - pos + i_off)
    return loss + online_loss(s, gamma1=gamma1) if online else loss
