"""The losses of "Adaptive Offline Quintuplet Loss for Image-Text Matching" (AOQ), as
functions of precomputed pair scores.

Each positive pair ``(i, t)`` of a batch comes with the scores of its negatives, held
by :class:`QuintupletScores` as ``(P,)`` tensors, row ``p`` for the ``p``-th positive
pair. The losses return the per-pair loss ``(P,)``; the paper's batch loss is its sum.

- :func:`online`: the hardest in-batch negative in both directions (AOQ Eq. 2);
- :func:`offtri`: plus a hinge on an offline hard negative per anchor (Eq. 3, "OffTri");
- :func:`offquin`: plus hinges on two derived offline negative pairs (Eq. 4, "OffQuin");
- :func:`adapoffquin`: Eq. 4 with the online hinges weighted by how far the offline
  negative scores above the online one (Eq. 5, "AdapOffQuin").

Offline hard negatives come from a first training round: each image and caption of
the training set keeps the top-h negatives it scores highest over the whole set, and
the second round samples one of them uniformly per anchor. Mining them, and finding
the in-batch hardest negatives, is the caller's job; these functions only combine
the scores.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from xmrbench.core.losses.aoq.adapoffquin import adapoffquin
from xmrbench.core.losses.aoq.offquin import offquin
from xmrbench.core.losses.aoq.offtri import offtri
from xmrbench.core.losses.aoq.online import online
from xmrbench.core.losses.aoq.scores import QuintupletScores

#: The AOQ losses by name; all take ``(scores, **margins)`` and return ``(P,)``.
LOSSES: dict[str, Callable[..., Tensor]] = {
    "online": online,
    "offtri": offtri,
    "offquin": offquin,
    "adapoffquin": adapoffquin,
}

__all__ = ["LOSSES", "QuintupletScores", "adapoffquin", "offquin", "offtri", "online"]
