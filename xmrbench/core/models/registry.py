"""Model registry: name -> model class (each class carries its ``Params``)."""

from __future__ import annotations

from xmrbench.core.models.base import RetrievalModel
from xmrbench.core.models.two_branch import TwoBranchEmbedding, TwoBranchSimilarity
from xmrbench.core.models.vsepp import VSEPP
from xmrbench.registry import Registry

MODELS: Registry[type[RetrievalModel]] = Registry(
    "model",
    {
        "vsepp": VSEPP,
        "two_branch_embedding": TwoBranchEmbedding,
        "two_branch_similarity": TwoBranchSimilarity,
    },
)
