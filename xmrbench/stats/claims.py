"""Verdicts on a paper's claims from paired results.

A claim ("non-linear beats linear") is a set of (better cell, worse cell) pairs on
one metric and protocol. Each pair is tested over seeds (paired by seed) and, where
per-query ranks are stored, over queries. The seed p-values of all pairs of a table
are Holm-corrected together. A pair *holds* when the better cell is ahead and the
corrected p is below alpha; it is *contradicted* when the better cell is behind with
corrected p below alpha; otherwise *not significant*. A claim holds when every pair
holds, is contradicted when any pair is, and is *untested* when any pair lacks
comparable results from at least two common seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from xmrbench.core.metrics import keys as K
from xmrbench.stats.paired import TestResult, holm, seed_ttest, signflip_test

ALPHA = 0.05


@dataclass
class Side:
    """One cell's results: metric value per seed and, optionally, ranks per seed."""

    values: Mapping[int, float]  # seed -> metric value
    ranks: Mapping[int, Mapping[str, Sequence[int]]] = field(default_factory=dict)  # seed -> {"i2t", "t2i"}


@dataclass
class PairVerdict:
    better: str
    worse: str
    verdict: str
    seeds: list[int]
    seed_test: TestResult | None = None
    query_test: TestResult | None = None
    p_adjusted: float | None = None
    reason: str | None = None


@dataclass
class ClaimVerdict:
    id: str
    text: str
    metric: str
    protocol: str
    verdict: str
    pairs: list[PairVerdict]


def per_query_scores(metric: str, ranks: Mapping[str, Sequence[int]]) -> tuple[list[np.ndarray], list[float]] | None:
    """Per-query contributions to ``metric`` (groups, weights), or None if not rank-based."""
    i2t = np.asarray(ranks.get("i2t", []))
    t2i = np.asarray(ranks.get("t2i", []))
    if metric == K.RSUM and len(i2t) and len(t2i):
        hits = lambda r: sum((r < k).astype(float) for k in (1, 5, 10))  # noqa: E731
        return [hits(i2t), hits(t2i)], [100.0 / len(i2t), 100.0 / len(t2i)]
    for direction, arr in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            if metric == f"{direction}_r{k}" and len(arr):
                return [(arr < k).astype(float)], [100.0 / len(arr)]
        if metric == f"{direction}_meanr" and len(arr):  # lower is better: negate
            return [-(arr + 1.0)], [1.0 / len(arr)]
    return None


def _query_test(metric: str, better: Side, worse: Side, seeds: list[int]) -> TestResult | None:
    groups: list[list[np.ndarray]] = []
    weights: list[float] | None = None
    for seed in seeds:
        if seed not in better.ranks or seed not in worse.ranks:
            return None
        a = per_query_scores(metric, better.ranks[seed])
        b = per_query_scores(metric, worse.ranks[seed])
        if a is None or b is None or [len(x) for x in a[0]] != [len(x) for x in b[0]]:
            return None
        groups.append([x - y for x, y in zip(a[0], b[0])])
        weights = a[1]
    if not groups or weights is None:
        return None
    n_groups = len(weights)
    pooled = [np.concatenate([g[i] for g in groups]) for i in range(n_groups)]
    # pooled over seeds: the statistic is the mean metric difference across seeds
    return signflip_test(pooled, weights=[w / len(seeds) for w in weights])


def judge(
    claims: Sequence[tuple[str, str, str, str, Sequence[tuple[str, str]]]],
    sides: Mapping[tuple[str, str, str], Side],
    *,
    comparable: Mapping[tuple[str, str, str], bool] | None = None,
    alpha: float = ALPHA,
) -> list[ClaimVerdict]:
    """Judge claims.

    ``claims``: (id, text, metric, protocol, pairs). ``sides[(cell, metric, protocol)]``
    holds that cell's results. ``comparable[(cell_a, cell_b, protocol)]`` may mark
    pairs whose results were measured on different protocols (never compared).
    """
    lower_is_better = {k for k, spec in K.METRICS.items() if not spec.higher_is_better}
    pair_verdicts: list[tuple[int, PairVerdict]] = []
    for ci, (_cid, _text, metric, protocol, pairs) in enumerate(claims):
        for better, worse in pairs:
            a, b = sides.get((better, metric, protocol)), sides.get((worse, metric, protocol))
            pv = PairVerdict(better, worse, "untested", [])
            if a is None or b is None:
                missing = better if a is None else worse
                pv.reason = f"no results for {missing!r}"
            elif comparable is not None and not comparable.get((better, worse, protocol), True):
                pv.reason = "results measured under different protocols"
            else:
                seeds = sorted(set(a.values) & set(b.values))
                pv.seeds = seeds
                sign = -1.0 if metric in lower_is_better else 1.0
                va = [sign * a.values[s] for s in seeds]
                vb = [sign * b.values[s] for s in seeds]
                pv.seed_test = seed_ttest(va, vb)
                pv.query_test = _query_test(metric, a, b, seeds) if seeds else None
                if pv.seed_test is None:
                    pv.reason = f"{len(seeds)} common seed(s); at least 2 are needed"
            pair_verdicts.append((ci, pv))
    tested = [pv for _, pv in pair_verdicts if pv.seed_test is not None]
    if tested:
        # two-sided use of one-sided tests: correct the smaller of the two directions
        raw = [min(1.0, 2 * min(pv.seed_test.p_greater, pv.seed_test.p_less)) for pv in tested]  # type: ignore[union-attr]
        for pv, p_adj in zip(tested, holm(raw)):
            pv.p_adjusted = p_adj
            diff = pv.seed_test.mean_diff  # type: ignore[union-attr]
            if p_adj < alpha and diff > 0:
                pv.verdict = "holds"
            elif p_adj < alpha and diff < 0:
                pv.verdict = "contradicted"
            else:
                pv.verdict = "not significant"
    out = []
    for ci, (cid, text, metric, protocol, _pairs) in enumerate(claims):
        pvs = [pv for i, pv in pair_verdicts if i == ci]
        states = {pv.verdict for pv in pvs}
        if "untested" in states:
            verdict = "untested"
        elif "contradicted" in states:
            verdict = "contradicted"
        elif states == {"holds"}:
            verdict = "holds"
        else:
            verdict = "not significant"
        out.append(ClaimVerdict(cid, text, metric, protocol, verdict, pvs))
    return out
