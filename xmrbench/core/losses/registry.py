"""Loss names -> loss classes, written out by hand so that ``grep`` finds every name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xmrbench.core.losses.base import RetrievalLoss
from xmrbench.core.losses.bidirectional_ranking import BidirectionalRankingLoss
from xmrbench.core.losses.dcca import DCCALoss
from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.losses.logistic import LogisticLoss
from xmrbench.core.losses.triplet_sum import TripletSumLoss
from xmrbench.registry import Registry

LOSSES: Registry[type[RetrievalLoss]] = Registry(
    "loss",
    {
        "triplet_sum": TripletSumLoss,
        "hardest_negative": HardestNegativeLoss,
        "bidirectional_ranking": BidirectionalRankingLoss,
        "logistic": LogisticLoss,
        "dcca": DCCALoss,
    },
)


def build_loss(name: str, params: Mapping[str, Any]) -> RetrievalLoss:
    """Validate ``params`` with the named loss's ``Params`` and construct the loss.

    An unknown name raises :class:`xmrbench.errors.RegistryError`; bad parameters
    raise pydantic's ``ValidationError``, which the caller turns into a config error.
    """
    loss_cls = LOSSES[name]
    return loss_cls(loss_cls.Params.model_validate(dict(params)))
