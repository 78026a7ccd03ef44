"""The one spelling of every metric key, used by the code, the store and every output.

Recalls are in percent (0-100), ranks are 1-based, mAP is a fraction (0-1), as the
papers print them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xmrbench.registry import Registry

I2T_R1, I2T_R5, I2T_R10 = "i2t_r1", "i2t_r5", "i2t_r10"
I2T_MEDR, I2T_MEANR = "i2t_medr", "i2t_meanr"
T2I_R1, T2I_R5, T2I_R10 = "t2i_r1", "t2i_r5", "t2i_r10"
T2I_MEDR, T2I_MEANR = "t2i_medr", "t2i_meanr"
RSUM = "rsum"

#: The six recalls whose sum is rsum, in the order most tables print them.
RECALL_KEYS: tuple[str, ...] = (I2T_R1, I2T_R5, I2T_R10, T2I_R1, T2I_R5, T2I_R10)
#: Everything ``evaluate`` prints for image <-> caption retrieval.
RETRIEVAL_KEYS: tuple[str, ...] = (
    I2T_R1, I2T_R5, I2T_R10, I2T_MEDR, I2T_MEANR,
    T2I_R1, T2I_R5, T2I_R10, T2I_MEDR, T2I_MEANR,
    RSUM,
)

MAP = "map"
I2T_MAP, T2I_MAP, AVG_MAP = "i2t_map", "t2i_map", "avg_map"

S2S_R1, S2S_R5, S2S_R10 = "s2s_r1", "s2s_r5", "s2s_r10"
PL_R1, PL_R5, PL_R10 = "pl_r1", "pl_r5", "pl_r10"
PL_UPPER = "pl_upper"

Scale = Literal["percent", "rank", "fraction"]


@dataclass(frozen=True)
class MetricSpec:
    key: str
    description: str
    scale: Scale
    higher_is_better: bool


def _recall(key: str, what: str) -> MetricSpec:
    return MetricSpec(key, what, "percent", True)


#: The metric registry: every key a recipe, a result or a report may use.
METRICS: Registry[MetricSpec] = Registry("metric", {
    spec.key: spec
    for spec in (
        _recall(I2T_R1, "image->text R@1: % of images with a matching caption ranked 1st"),
        _recall(I2T_R5, "image->text R@5"),
        _recall(I2T_R10, "image->text R@10"),
        MetricSpec(I2T_MEDR, "image->text median rank (1-based, best caption)", "rank", False),
        MetricSpec(I2T_MEANR, "image->text mean rank (1-based, best caption)", "rank", False),
        _recall(T2I_R1, "text->image R@1: % of captions whose image is ranked 1st"),
        _recall(T2I_R5, "text->image R@5"),
        _recall(T2I_R10, "text->image R@10"),
        MetricSpec(T2I_MEDR, "text->image median rank (1-based)", "rank", False),
        MetricSpec(T2I_MEANR, "text->image mean rank (1-based)", "rank", False),
        MetricSpec(RSUM, "sum of the six recalls R@1,5,10 in both directions", "percent", True),
        MetricSpec(MAP, "mean average precision over the whole ranked list", "fraction", True),
        MetricSpec(I2T_MAP, "image-query mAP (label relevance)", "fraction", True),
        MetricSpec(T2I_MAP, "text-query mAP (label relevance)", "fraction", True),
        MetricSpec(AVG_MAP, "mean of image-query and text-query mAP", "fraction", True),
        _recall(S2S_R1, "sentence->sentence R@1 (other captions of the same image)"),
        _recall(S2S_R5, "sentence->sentence R@5"),
        _recall(S2S_R10, "sentence->sentence R@10"),
        _recall(PL_R1, "phrase localization R@1 (IoU >= 0.5)"),
        _recall(PL_R5, "phrase localization R@5 (IoU >= 0.5)"),
        _recall(PL_R10, "phrase localization R@10 (IoU >= 0.5)"),
        _recall(PL_UPPER, "phrases with a proposal at IoU >= 0.5 (the upper bound of any ranking)"),
    )
})
