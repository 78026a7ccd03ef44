"""Evaluation protocols: which split is scored, how (whole, or averaged over folds), and
which task is measured on it (``task``: image-sentence retrieval, label-based
retrieval by mAP, sentence-to-sentence retrieval; the evaluators are in
``xmrbench/engine/tasks.py``).

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
    task: str = "image_text"  # image_text | label | sentence | phrase
    # label task only: the depth its mAP is cut at. None: the whole ranked list, divided by
    # all relevant items (keys i2t_map, t2i_map, avg_map); 50: the released ACMR code's
    # mAP@50, divided by the relevant items found in the top 50 (i2t_map50, ...)
    map_at: int | None = None
    # image_text task only: also record R@10 / 100 of each direction and their mean as
    # fractions (keys i2t_r10_frac, t2i_r10_frac, avg_r10_frac), the scale on which ACMR's
    # Table 4 prints MS-COCO retrieval under the name "mAP"
    r10_fraction: bool = False


PROTOCOLS: Registry[Protocol] = Registry(
    "protocol",
    {
        "test": Protocol("test", "test", 1, "the whole test split at once (Flickr30K 1K test)"),
        "dev": Protocol("dev", "dev", 1, "the whole validation split at once (ablations reported on it)"),
        "testall": Protocol("testall", "testall", 1, "the whole testall split at once (MS-COCO 5K)"),
        "testall_5fold": Protocol(
            "testall_5fold", "testall", 5, "mean over 5 consecutive folds of testall (MS-COCO 1K)"
        ),
        "test_r10_fraction": Protocol(
            "test_r10_fraction", "test", 1, "image-sentence retrieval on the whole test split, as 'test', with R@10 / "
            "100 of each direction and their mean as fractions (keys i2t_r10_frac, t2i_r10_frac, avg_r10_frac): "
            "what ACMR Table 4 prints as 'mAP' for MS-COCO 1K", r10_fraction=True
        ),
        "test_labels": Protocol(
            "test_labels", "test", 1, "label-based retrieval on test: mAP over the whole ranked list divided by all "
            "relevant items (the ACMR paper's mAP; keys i2t_map, t2i_map, avg_map) and precision at K = 50..1000, "
            "relevant = sharing a class with the query", task="label"
        ),
        "test_labels_map50": Protocol(
            "test_labels_map50", "test", 1, "label-based retrieval on test: mAP@50 of the released ACMR code, AP "
            "over the top 50 divided by the relevant items found there (keys i2t_map50, t2i_map50, avg_map50), "
            "and precision at K = 50..1000, relevant = sharing a class with the query", task="label", map_at=50
        ),
        "test_s2s": Protocol(
            "test_s2s", "test", 1, "sentence-to-sentence retrieval on test: each caption against the others, "
            "relevant = describing the same image (two-branch Table 4)", task="sentence"
        ),
        "test_phrases": Protocol(
            "test_phrases", "test", 1, "phrase localization on test: each phrase ranks its image's region "
            "proposals, a hit at IoU >= 0.5 with a ground-truth box (two-branch Table 1)", task="phrase"
        ),
    },
)
