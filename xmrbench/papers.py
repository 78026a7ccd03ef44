"""The papers whose tables xmrbench reproduces, and the baselines their tables cite."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xmrbench.registry import Registry


@dataclass(frozen=True)
class SweepParam:
    """A parameter ``xmrbench sweep <paper> --<name> v1,v2`` varies: the config ``key`` of the
    row ``row`` of recipe ``recipe`` (the paper's table that varies it); each value becomes a
    copy of that row, beside the rows it needs. ``shape``: how several parameters of one
    recipe combine by default, ``grid`` (every combination) or ``star`` (one at a time
    around the row's own values, as a table that varies one parameter per line prints)."""

    recipe: str
    row: str
    key: str
    shape: Literal["grid", "star"] = "grid"
    help: str = ""


@dataclass(frozen=True)
class Paper:
    key: str
    short: str
    title: str
    authors: str
    venue: str
    year: int
    in_scope: bool = True  # one of the five papers xmrbench reproduces in full
    sweep_recipe: str | None = None  # the recipe ``xmrbench sweep <paper>`` varies
    # parameters with a table of their own: ``xmrbench sweep <paper> --<name>`` varies that table's row
    sweeps: dict[str, SweepParam] = field(default_factory=dict)


PAPERS: Registry[Paper] = Registry(
    "paper",
    {
        "a3vse": Paper(
            "a3vse", "A3VSE",
            "Annotation Efficient Cross-Modal Retrieval with Adversarial Attentive Alignment",
            "Po-Yao Huang, Guoliang Kang, Wenhe Liu, Xiaojun Chang, Alexander G. Hauptmann",
            "ACM Multimedia", 2019,
        ),
        "aoq": Paper(
            "aoq", "AOQ", "Adaptive Offline Quintuplet Loss for Image-Text Matching",
            "Tianlang Chen, Jiajun Deng, Jiebo Luo", "ECCV", 2020,
            sweeps={
                "h": SweepParam("aoq-table3", "vsrn-adapoffquin", "method.h",
                                help="top-list size of the offline captions (images: h // 5), Table 3"),
                "alpha": SweepParam("aoq-table5", "beta1.5-alpha0.3", "method.alpha", shape="star",
                                    help="alpha of Eq. 5's adaptive weights, Table 5"),
                "beta": SweepParam("aoq-table5", "beta1.5-alpha0.3", "method.beta", shape="star",
                                   help="beta of Eq. 5's adaptive weights, Table 5"),
            },
        ),
        "two_branch": Paper(
            "two_branch", "Two-branch",
            "Learning Two-Branch Neural Networks for Image-Text Matching Tasks",
            "Liwei Wang, Yin Li, Svetlana Lazebnik", "IEEE TPAMI", 2018,
            sweep_recipe="two-branch-table2",
        ),
        "adapt": Paper(
            "adapt", "ADAPT", "Adaptive Cross-Modal Embeddings for Image-Text Alignment",
            "Jonatas Wehrmann, Camila Kolling, Rodrigo C. Barros", "AAAI", 2020,
        ),
        "acmr": Paper(
            "acmr", "ACMR", "Adversarial Cross-Modal Retrieval",
            "Bokun Wang, Yang Yang, Xing Xu, Alan Hanjalic, Heng Tao Shen", "ACM Multimedia", 2017,
            sweeps={
                "alpha": SweepParam("acmr-figure6", "full-acmr", "method.alpha", shape="star",
                                    help="weight of L_imi in Eq. 8, Figure 6(a)"),
                "beta": SweepParam("acmr-figure6", "full-acmr", "method.beta", shape="star",
                                   help="weight of L_imd in Eq. 8, Figure 6(a)"),
                "k": SweepParam("acmr-figure6", "full-acmr", "method.k", shape="star",
                                help="embedding steps per modality-classifier step (Algorithm 1), Figure 6(b)"),
            },
        ),
        "vsepp": Paper(
            "vsepp", "VSE++", "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives",
            "Fartash Faghri, David J. Fleet, Jamie Ryan Kiros, Sanja Fidler", "BMVC", 2018,
            in_scope=False, sweep_recipe="vsepp-flickr30k",
        ),
    },
)
