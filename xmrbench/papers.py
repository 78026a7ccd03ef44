"""The papers whose tables xmrbench reproduces, and the baselines their tables cite."""

from __future__ import annotations

from dataclasses import dataclass

from xmrbench.registry import Registry


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
        ),
        "vsepp": Paper(
            "vsepp", "VSE++", "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives",
            "Fartash Faghri, David J. Fleet, Jamie Ryan Kiros, Sanja Fidler", "BMVC", 2018,
            in_scope=False, sweep_recipe="vsepp-flickr30k",
        ),
    },
)
