"""Evaluation protocols: which split is scored and how (whole, or averaged over folds).

A protocol name appears in recipes (``eval.protocols`` and the keys of a row's paper
numbers) and in every stored result, so "MS-COCO 1K" (five folds of testall) can
never be confused with "MS-COCO 5K" (all of testall) or a single 1K test split.
"""

from __future__ import annotations

from dataclasses import dataclass

from xmrbench.registry import Registry


@dataclass(frozen=True)
class Protocol:
    name: str
    split: str
    folds: int
    description: str


PROTOCOLS: Registry[Protocol] = Registry(
    "protocol",
    {
        "test": Protocol("test", "test", 1, "the whole test split at once (Flickr30K 1K test)"),
        "dev": Protocol("dev", "dev", 1, "the whole validation split at once (ablations reported on it)"),
        "testall": Protocol("testall", "testall", 1, "the whole testall split at once (MS-COCO 5K)"),
        "testall_5fold": Protocol(
            "testall_5fold", "testall", 5, "mean over 5 consecutive folds of testall (MS-COCO 1K)"
        ),
    },
)
