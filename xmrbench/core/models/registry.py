"""Model registry: name -> model class (each class carries its ``Params``)."""

from __future__ import annotations

from xmrbench.core.models.a3vse import A3VSE
from xmrbench.core.models.acmr import ACMR
from xmrbench.core.models.adapt import ADAPT
from xmrbench.core.models.base import RetrievalModel
from xmrbench.core.models.bfan import BFAN
from xmrbench.core.models.cca import CCA
from xmrbench.core.models.cca3v import CCA3V
from xmrbench.core.models.corr_ae import CorrAE
from xmrbench.core.models.dan import DAN
from xmrbench.core.models.deep_cca import DeepCCA
from xmrbench.core.models.dpc import DPC
from xmrbench.core.models.order import OrderEmbeddings
from xmrbench.core.models.scan import SCAN
from xmrbench.core.models.sg_baseline import SGBaseline
from xmrbench.core.models.two_branch import TwoBranchEmbedding, TwoBranchSimilarity
from xmrbench.core.models.vsepp import VSEPP
from xmrbench.core.models.vsrn import VSRN
from xmrbench.registry import Registry

MODELS: Registry[type[RetrievalModel]] = Registry(
    "model",
    {
        "vsepp": VSEPP,
        "two_branch_embedding": TwoBranchEmbedding,
        "two_branch_similarity": TwoBranchSimilarity,
        "scan": SCAN,
        "bfan": BFAN,
        "cca": CCA,
        "cca3v": CCA3V,
        "corr_ae": CorrAE,
        "sg_baseline": SGBaseline,
        "vsrn": VSRN,
        "dpc": DPC,
        "dan": DAN,
        "a3vse": A3VSE,
        "order_embeddings": OrderEmbeddings,
        "adapt": ADAPT,
        "acmr": ACMR,
        "deep_cca": DeepCCA,
    },
)
