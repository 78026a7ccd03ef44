"""The one spelling of every metric key, used by the code, the store and every output.

Recalls are in percent (0-100), ranks are 1-based, mAP and precision are fractions
(0-1), as the papers print them.

Label-based retrieval has two mAPs that never share a key: ``i2t_map``, ``t2i_map``,
``avg_map`` are average precision over the whole ranked list normalised by all relevant
items (the ACMR paper's mAP, protocol ``test_labels``); ``i2t_map50``, ``t2i_map50``,
``avg_map50`` are the released ACMR code's "mAP@50", over the top 50 normalised by the
relevant items found there (protocol ``test_labels_map50``). ``i2t_p50`` ...
``t2i_p1000`` are the precision-scope points (precision of the top K, ACMR Figure 3),
recorded by both label protocols.
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
I2T_MAP50, T2I_MAP50, AVG_MAP50 = "i2t_map50", "t2i_map50", "avg_map50"
#: The chance levels of the whole-list mAPs: the expected mAP of a uniformly random ranking
#: of the split, from its labels (``xmrbench/gate/chance.py``); recorded by the ``label``
#: task beside the mAPs for the gate's learning bar, never a result to compare
I2T_MAP_CHANCE, T2I_MAP_CHANCE, AVG_MAP_CHANCE = "i2t_map_chance", "t2i_map_chance", "avg_map_chance"
#: (image-query, text-query, mean) mAP keys by the depth the mAP is cut at: None = the
#: whole ranked list (the paper's mAP), 50 = the released ACMR code's mAP@50
LABEL_MAP_KEYS: dict[int | None, tuple[str, str, str]] = {
    None: (I2T_MAP, T2I_MAP, AVG_MAP),
    50: (I2T_MAP50, T2I_MAP50, AVG_MAP50),
}

#: The precision-scope K's (ACMR Figure 3): the figure's points run from 50 to 1000 in
#: steps of 50 (the paper's text says the scope varies "from 1 to 1000", its figure and
#: caption start at 50; we record the figure's points).
PRECISION_SCOPES: tuple[int, ...] = tuple(range(50, 1001, 50))


def precision_key(direction: Literal["i2t", "t2i"], k: int) -> str:
    """The key of the precision of the top ``k`` for image (``i2t``) or text (``t2i``) queries."""
    if direction not in ("i2t", "t2i") or k not in PRECISION_SCOPES:
        raise ValueError(f"no precision key for {direction!r} at {k!r}; scopes are {PRECISION_SCOPES}")
    return f"{direction}_p{k}"


#: image-query and text-query precision at every scope, in scope order
I2T_PRECISION_KEYS: tuple[str, ...] = tuple(f"i2t_p{k}" for k in PRECISION_SCOPES)
T2I_PRECISION_KEYS: tuple[str, ...] = tuple(f"t2i_p{k}" for k in PRECISION_SCOPES)

#: R@10 / 100 of each direction and their mean, as fractions: what ACMR's Table 4 prints
#: under "mAP" for MS-COCO 1K image-sentence retrieval (the values it quotes from DSPE are
#: the R@10 those methods report, divided by 100); recorded by protocol
#: ``test_r10_fraction`` beside the recalls, so a recipe can print them on the paper's scale
I2T_R10_FRAC, T2I_R10_FRAC, AVG_R10_FRAC = "i2t_r10_frac", "t2i_r10_frac", "avg_r10_frac"

S2S_R1, S2S_R5, S2S_R10 = "s2s_r1", "s2s_r5", "s2s_r10"
PL_R1, PL_R5, PL_R10 = "pl_r1", "pl_r5", "pl_r10"
PL_UPPER = "pl_upper"
#: the expected phrase-localization R@1 of a random ranking of each phrase's proposals
#: (percent), and the number of phrases scored: recorded by the ``phrase`` task for the
#: regression gate's learning bar and resolution, never a result to compare
PL_R1_CHANCE, PL_PHRASES = "pl_r1_chance", "pl_phrases"

Scale = Literal["percent", "rank", "fraction", "count"]


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
        MetricSpec(I2T_MAP, "image-query mAP over the whole ranked list (label relevance)", "fraction", True),
        MetricSpec(T2I_MAP, "text-query mAP over the whole ranked list (label relevance)", "fraction", True),
        MetricSpec(AVG_MAP, "mean of image-query and text-query mAP (whole list)", "fraction", True),
        MetricSpec(I2T_MAP50, "image-query mAP@50 of the released ACMR code (top 50, normalised by the hits "
                   "found there; label relevance)", "fraction", True),
        MetricSpec(T2I_MAP50, "text-query mAP@50 of the released ACMR code (top 50, normalised by the hits "
                   "found there; label relevance)", "fraction", True),
        MetricSpec(AVG_MAP50, "mean of image-query and text-query mAP@50", "fraction", True),
        MetricSpec(I2T_MAP_CHANCE, "chance level of i2t_map: expected image-query mAP of a random ranking of the "
                   "split (from its labels; not a result)", "fraction", False),
        MetricSpec(T2I_MAP_CHANCE, "chance level of t2i_map: expected text-query mAP of a random ranking of the "
                   "split (from its labels; not a result)", "fraction", False),
        MetricSpec(AVG_MAP_CHANCE, "chance level of avg_map: mean of i2t_map_chance and t2i_map_chance (not a "
                   "result)", "fraction", False),
        *(MetricSpec(f"i2t_p{k}", f"image-query precision of the top {k} (label relevance)", "fraction", True)
          for k in PRECISION_SCOPES),
        *(MetricSpec(f"t2i_p{k}", f"text-query precision of the top {k} (label relevance)", "fraction", True)
          for k in PRECISION_SCOPES),
        MetricSpec(I2T_R10_FRAC, "image->text R@10 / 100 (the scale of ACMR Table 4's 'mAP' column)", "fraction",
                   True),
        MetricSpec(T2I_R10_FRAC, "text->image R@10 / 100 (the scale of ACMR Table 4's 'mAP' column)", "fraction",
                   True),
        MetricSpec(AVG_R10_FRAC, "mean of i2t_r10_frac and t2i_r10_frac", "fraction", True),
        _recall(S2S_R1, "sentence->sentence R@1 (other captions of the same image)"),
        _recall(S2S_R5, "sentence->sentence R@5"),
        _recall(S2S_R10, "sentence->sentence R@10"),
        _recall(PL_R1, "phrase localization R@1 (IoU >= 0.5)"),
        _recall(PL_R5, "phrase localization R@5 (IoU >= 0.5)"),
        _recall(PL_R10, "phrase localization R@10 (IoU >= 0.5)"),
        _recall(PL_UPPER, "phrases with a proposal at IoU >= 0.5 (the upper bound of any ranking)"),
        MetricSpec(PL_R1_CHANCE, "chance level of pl_r1: expected R@1 of a random ranking of each phrase's proposals "
                   "(not a result)", "percent", False),
        MetricSpec(PL_PHRASES, "number of phrases scored by phrase localization (not a result)", "count", False),
    )
})
