"""Adaptive offline quintuplet loss (AOQ Eq. 5, "AdapOffQuin"): OffQuin whose online
hinges are weighted by the gap between the offline and the online negative's score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import Tensor

from xmrbench.core.losses.base import hinge

if TYPE_CHECKING:
    from xmrbench.core.losses.aoq.scores import QuintupletScores

Reference = Literal["offline", "positive"]


def adapoffquin(
    s: QuintupletScores,
    *,
    gamma1: float,
    gamma2: float,
    alpha: float,
    beta: float,
    reference: Reference = "offline",
    online: bool = True,
) -> Tensor:
    """Per positive pair ``(i, t)`` (AOQ Eq. 5)::

        (b - (S(i,t_off) - S(i,t_on)) / a) [g1 - S(i,t) + S(i,t_on)]_+
            + [g2 - S(i,t) + S(i,t_off)]_+ + [g2 - S(i,t) + S(i_off,t_off)]_+
      + (b - (S(i_off,t) - S(i_on,t)) / a) [g1 - S(i,t) + S(i_on,t)]_+
            + [g2 - S(i,t) + S(i_off,t)]_+ + [g2 - S(i,t) + S(i~_off,t~_off)]_+

    ``a = alpha > 0``, ``b = beta`` (the paper: 0.3 and 1.5), ``gamma1`` / ``gamma2`` the
    online / offline margins (0.2 and 0). The weights are part of the graph, not
    constants: their gradients are those of AOQ Eq. 6, e.g. the image-anchored line
    gives ``dL/dS(i,t_off) = ((S(i,t) - S(i,t_on) - g1) / a) 1[online hinge > 0] +
    1[offline hinge > 0]``. A weight is not clamped: it is negative when the offline
    negative scores more than ``a * b`` above the online one, and then that weighted
    term lowers the loss.

    ``reference="positive"`` (the "w/o OfflineAdap" ablation) uses ``S(i,t)`` in place
    of ``S(i,t_off)`` and ``S(i_off,t)`` inside the two weights only; the offline hinges
    are unchanged. ``online=False`` drops the weighted online terms ("OnlyOffline"),
    which leaves the offline part of :func:`~xmrbench.core.losses.aoq.offquin`.
    Needs ``t_off``, ``i_off``, ``pair_a``, ``pair_b``. Returns ``(P,)``.
    """
    if not alpha > 0:
        raise ValueError(f"adapoffquin needs alpha > 0; got {alpha}")
    if reference not in ("offline", "positive"):
        raise ValueError(f"adapoffquin reference must be 'offline' or 'positive'; got {reference!r}")
    pos, t_on, i_on, t_off, i_off, pair_a, pair_b = s.need(
        "adapoffquin", "pos", "t_on", "i_on", "t_off", "i_off", "pair_a", "pair_b"
    )
    loss = (
        hinge(gamma2 - pos + t_off)
        + hinge(gamma2 - pos + pair_a)
        + hinge(gamma2 - pos + i_off)
        + hinge(gamma2 - pos + pair_b)
    )
    if not online:
        return loss
    ref_t, ref_i = (t_off, i_off) if reference == "offline" else (pos, pos)
    weight_t = beta - (ref_t - t_on) / alpha
    weight_i = beta - (ref_i - i_on) / alpha
    return loss + weight_t * hinge(gamma1 - pos + t_on) + weight_i * hinge(gamma1 - pos + i_on)
