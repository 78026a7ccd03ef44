"""Verdicts on a paper's claims from paired results.

A claim ("non-linear beats linear") is a set of (better cell, worse cell) pairs on
one metric and protocol. Each pair is judged over seeds (paired by seed, see
``paired.seed_test``) and, where per-query ranks are stored, tested over queries
(shown beside, never deciding). A pair is

- *untested* when a side has no results, a side's training has not converged
  (``unconverged``; unless the caller includes such runs on purpose), the two sides
  were measured under different protocols, or they share fewer than two seeds;
- *deterministic* when both sides are equal across seeds: no p-value exists, and
  the exact difference d decides against a minimum effect m (``min_effect``):
  *holds* when d > m, *contradicted* when d < -m, *not significant* when
  |d| <= m (a gap within the metric's resolution is no evidence either way);
- otherwise tested: the seed p-values (t-test, or the exact sign-flip test when
  the difference has zero variance) of all tested pairs of a table are
  Holm-corrected together; *holds* when the better cell is ahead with corrected
  p below alpha, *contradicted* when it is behind with corrected p below alpha,
  else *not significant*.

A tested directional pair that is *not significant* also gets a seed plan
(``seeds_for_power``): how many seeds its seed test would need to decide, with
80% power, for the direction it points to, were the observed mean difference and
spread the true ones, at the Bonferroni level alpha / m of its table's family of m
tested pairs. Below that level a pair holds under Holm whatever the other pairs
do, so the plan does not depend on them. It is an estimate for planning, as loose as
the few seeds' estimate of the spread it rests on.

An *equivalence* claim ("A matches B within a margin m", in the metric's units)
judges each pair [a, b] on d_s = a_s - b_s over the seeds both sides have, by two
one-sided paired t-tests (TOST, ``paired.seed_tost``): H0a mean(d) <= -m and H0b
mean(d) >= +m, p_tost = max(p_a, p_b). Untested for the same reasons as a
directional pair. A difference equal across seeds (zero spread, deterministic
sides included) has no p-value: *holds* when |d| < m, *contradicted* when |d| > m,
else *not significant*. Otherwise the pair enters the table's Holm family with one
p-value, as a directional pair does: the p of the conclusion its data point to,
p_tost when |mean d| < m, else the two-sided p that |mean d| > m (the smaller of
the one-sided p's for mean(d) > +m and mean(d) < -m, doubled, as the directional
two-sided p is). *holds* when the corrected p is below alpha and the mean is
inside the margin, *contradicted* when it is below alpha and the mean is outside,
else *not significant*. The query test (a test of "no difference") is not run for
equivalence pairs.

A claim takes the first of its pairs' verdicts in the order contradicted >
untested > not significant > holds: one contradicted pair contradicts it even if
another could not be tested, and it holds only when every pair holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmrbench.core.metrics import keys as K
from xmrbench.stats.paired import (
    PLAN_MAX_SEEDS,
    PLAN_POWER,
    SIGNTEST,
    TestResult,
    TostResult,
    holm,
    seed_test,
    seed_tost,
    seeds_for_power,
    signflip_test,
)

ALPHA = 0.05
#: Verdicts from strongest to weakest; a claim takes the first one any of its pairs has.
PRECEDENCE = ("contradicted", "untested", "not significant", "holds")
#: Minimum effect when the number of queries is unknown: the precision the papers
#: print (0.1 points for recalls, 0.1 for mean ranks, three decimals for mAP).
FALLBACK_MIN_EFFECT = {"percent": 0.1, "rank": 0.1, "fraction": 0.001}
_MIN_EFFECT_RTOL = 1e-6  # a gap must beat the minimum effect by more than float noise
NOT_CONVERGED = "not converged"
BETTER, EQUIVALENT = "better", "equivalent"  # claim kinds


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
    p_adjusted: float | None = None  # None: untested or deterministic (no p-value)
    reason: str | None = None
    min_effect: float | None = None  # deterministic pairs: the gap the difference must exceed
    kind: str = BETTER  # EQUIVALENT: ``better`` and ``worse`` are the pair's cells a and b, unordered
    margin: float | None = None  # equivalence pairs: the margin
    tost: TostResult | None = None  # equivalence pairs: the tests over seeds (None: untested)
    diff_sd: float | None = None  # tested directional pairs: sample sd of the per-seed differences
    seeds_for_power: int | None = None  # not significant pairs: the seed plan (None: none, or beyond the cap)
    plan_level: float | None = None  # the significance level the plan is for: alpha / (tested pairs)

    @property
    def deterministic(self) -> bool:
        if self.kind == EQUIVALENT:
            return self.tost is not None and self.tost.exact
        return self.seed_test is not None and self.seed_test.deterministic

    @property
    def evidence(self) -> str:
        """One line for a report: the difference, the rule that judged it, the verdict."""
        head = f"{self.better} vs {self.worse}"
        if self.kind == EQUIVALENT:
            return self._equivalence_evidence(head)
        st = self.seed_test
        if st is None:
            return f"{head}: {self.reason}"
        text = f"{head}: Δ={st.mean_diff:+.4g}, n={st.n} seeds, "
        if st.deterministic:
            text += f"{self.reason}"
        else:
            kind = "sign test" if st.test == SIGNTEST else "t-test"
            text += f"{kind}, p_holm={self.p_adjusted:.3g}"
            if self.plan_level is not None:
                n = self.seeds_for_power
                plan = f"{n} seeds" if n is not None else f"more than {PLAN_MAX_SEEDS} seeds"
                text += f", {PLAN_POWER:.0%} power at α={self.plan_level:.2g} needs {plan}"
        if self.query_test is not None:
            qt = self.query_test
            text += f", query p={min(1.0, 2 * min(qt.p_greater, qt.p_less)):.3g}"  # type: ignore[type-var]
        return f"{text} → {self.verdict}"

    def _equivalence_evidence(self, head: str) -> str:
        text = f"{head}: equivalence test (TOST), margin ±{self.margin:.4g}"
        tt = self.tost
        if tt is None:
            return f"{text}: {self.reason}"
        text += f", Δ={tt.mean_diff:+.4g}, n={tt.n} seeds, "
        if tt.exact:
            text += f"p_tost none ({self.reason})"
        else:
            text += f"p_tost={tt.p_tost:.3g}"
            if abs(tt.mean_diff) >= tt.margin:
                text += f", p_outside={tt.p_outside:.3g}"
            text += f", p_holm={self.p_adjusted:.3g}"
        return f"{text} → {self.verdict}"


@dataclass
class ClaimVerdict:
    id: str
    text: str
    metric: str
    protocol: str
    verdict: str
    pairs: list[PairVerdict]
    kind: str = BETTER
    margin: float | None = None  # equivalence claims

    @property
    def label(self) -> str:
        """The verdict as a report prints it: an untested claim says why when every
        untested pair waits for a model to converge."""
        untested = [pv for pv in self.pairs if pv.verdict == "untested"]
        if self.verdict == "untested" and untested and all((pv.reason or "").startswith(NOT_CONVERGED) for pv in untested):
            return f"untested ({NOT_CONVERGED})"
        return self.verdict


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


def default_min_effect(metric: str, ranks: Mapping[str, Sequence[int]] | None = None) -> tuple[float, str]:
    """The minimum effect of ``metric`` for deterministic pairs (a gap must exceed it), and why.

    One query's worth where the query count is known from stored ranks (0-based,
    ``{"i2t": (n_images,), "t2i": (n_captions,)}``): R@K of a direction 100 / n
    of that direction; rsum 100 / n_images (one image query crossing one
    cut-off); mean rank 1 / n (one query moving one place). Median rank: 1 (one
    rank). Otherwise ``FALLBACK_MIN_EFFECT`` by the metric's scale.
    """
    counts = {d: len(ranks.get(d, ())) for d in ("i2t", "t2i")} if ranks else {}
    direction, _, rest = metric.partition("_")
    n = counts.get(direction, 0)
    if rest in ("medr",):
        return 1.0, "one rank"
    if metric == K.RSUM and counts.get("i2t"):
        return 100.0 / counts["i2t"], f"one image query of {counts['i2t']}"
    if rest in ("r1", "r5", "r10") and n:
        return 100.0 / n, f"one query of {n}"
    if rest == "meanr" and n:
        return 1.0 / n, f"one query of {n} moving one rank"
    spec = K.METRICS.get(metric)
    scale = spec.scale if spec is not None else "percent"
    return FALLBACK_MIN_EFFECT[scale], "the papers' printed precision"


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


def _judge_deterministic(pv: PairVerdict, metric: str, a: Side, b: Side, min_effect: float | None) -> None:
    st = pv.seed_test
    assert st is not None
    ranks = next((s.ranks[x] for x in pv.seeds for s in (a, b) if x in s.ranks), None)
    if min_effect is None:
        m, why = default_min_effect(metric, ranks)
    else:
        m, why = float(min_effect), "set for this metric"
    pv.min_effect = m
    d, margin = st.mean_diff, m + _MIN_EFFECT_RTOL * max(m, 1e-12)
    pv.verdict = "holds" if d > margin else "contradicted" if d < -margin else "not significant"
    op = ">" if abs(d) > margin else "<="
    pv.reason = f"{st.test}: |Δ| {op} minimum effect {m:.4g} ({why})"


def _judge_exact_equivalence(pv: PairVerdict) -> None:
    tt = pv.tost
    assert tt is not None and tt.exact
    d, m = abs(tt.mean_diff), tt.margin
    tol = _MIN_EFFECT_RTOL * m  # a difference must clear the margin by more than float noise
    pv.verdict = "holds" if d < m - tol else "contradicted" if d > m + tol else "not significant"
    op = "<" if d < m - tol else ">" if d > m + tol else "="
    pv.reason = f"difference equal across seeds: |Δ| {op} margin"


def judge(
    claims: Sequence[tuple[Any, ...]],
    sides: Mapping[tuple[str, str, str], Side],
    *,
    comparable: Mapping[tuple[str, str, str], bool] | None = None,
    alpha: float = ALPHA,
    min_effect: Mapping[str, float] | None = None,
    unconverged: Mapping[str, str] | None = None,
) -> list[ClaimVerdict]:
    """Judge claims.

    ``claims``: (id, text, metric, protocol, pairs), or (id, text, metric, protocol,
    pairs, kind, margin) where kind is ``BETTER`` (margin None) or ``EQUIVALENT``
    (pairs [a, b], margin > 0). ``sides[(cell, metric, protocol)]``
    holds that cell's results. ``comparable[(cell_a, cell_b, protocol)]`` may mark
    pairs whose results were measured on different protocols (never compared).
    ``min_effect[metric]`` replaces ``default_min_effect`` for deterministic pairs.
    ``unconverged[cell]``: why that cell's training has not converged; its pairs are
    untested.
    """
    unconverged = unconverged or {}
    lower_is_better = {k for k, spec in K.METRICS.items() if not spec.higher_is_better}
    pair_verdicts: list[tuple[int, PairVerdict]] = []
    for ci, spec in enumerate(claims):
        metric, protocol, pairs = spec[2], spec[3], spec[4]
        kind, margin = (spec[5], spec[6]) if len(spec) > 5 else (BETTER, None)
        if kind == EQUIVALENT and not (margin is not None and margin > 0):
            raise ValueError(f"claim {spec[0]!r}: an equivalence claim needs a margin > 0")
        if kind not in (BETTER, EQUIVALENT):
            raise ValueError(f"claim {spec[0]!r}: unknown kind {kind!r}")
        for better, worse in pairs:
            a, b = sides.get((better, metric, protocol)), sides.get((worse, metric, protocol))
            pv = PairVerdict(better, worse, "untested", [], kind=kind, margin=margin if kind == EQUIVALENT else None)
            if a is None or b is None:
                missing = better if a is None else worse
                pv.reason = f"no results for {missing!r}"
            elif better in unconverged or worse in unconverged:
                pv.reason = "; ".join(f"{NOT_CONVERGED}: {c!r} ({unconverged[c]})" for c in (better, worse) if c in unconverged)
            elif comparable is not None and not comparable.get((better, worse, protocol), True):
                pv.reason = "results measured under different protocols"
            elif kind == EQUIVALENT:
                seeds = sorted(set(a.values) & set(b.values))
                pv.seeds = seeds
                pv.tost = seed_tost([a.values[s] for s in seeds], [b.values[s] for s in seeds], margin)
                if pv.tost is None:
                    pv.reason = f"{len(seeds)} common seed(s); at least 2 are needed"
                elif pv.tost.exact:
                    _judge_exact_equivalence(pv)
            else:
                seeds = sorted(set(a.values) & set(b.values))
                pv.seeds = seeds
                sign = -1.0 if metric in lower_is_better else 1.0
                va = [sign * a.values[s] for s in seeds]
                vb = [sign * b.values[s] for s in seeds]
                pv.seed_test = seed_test(va, vb)
                if len(seeds) >= 2:
                    pv.diff_sd = float(np.std(np.subtract(va, vb), ddof=1))
                pv.query_test = _query_test(metric, a, b, seeds) if seeds else None
                if pv.seed_test is None:
                    pv.reason = f"{len(seeds)} common seed(s); at least 2 are needed"
                elif pv.seed_test.deterministic:
                    _judge_deterministic(pv, metric, a, b, (min_effect or {}).get(metric))
            pair_verdicts.append((ci, pv))
    # one Holm family per table: every tested pair, directional or equivalence, with one p-value
    tested = [pv for _, pv in pair_verdicts
              if (pv.tost is not None or pv.seed_test is not None) and not pv.deterministic]
    if tested:
        raw = [_pair_p(pv) for pv in tested]
        for pv, p_adj in zip(tested, holm(raw)):
            pv.p_adjusted = p_adj
            if pv.tost is not None:  # equivalence: inside or outside the margin
                inside = abs(pv.tost.mean_diff) < pv.tost.margin
                pv.verdict = "not significant" if p_adj >= alpha else "holds" if inside else "contradicted"
                continue
            diff = pv.seed_test.mean_diff  # type: ignore[union-attr]
            if p_adj < alpha and diff > 0:
                pv.verdict = "holds"
            elif p_adj < alpha and diff < 0:
                pv.verdict = "contradicted"
            else:
                pv.verdict = "not significant"
                if pv.diff_sd is not None and diff != 0.0:
                    pv.plan_level = alpha / len(tested)
                    sd = 0.0 if pv.seed_test.test == SIGNTEST else pv.diff_sd  # type: ignore[union-attr]
                    pv.seeds_for_power = seeds_for_power(diff, sd, level=pv.plan_level)
    out = []
    for ci, spec in enumerate(claims):
        cid, text, metric, protocol = spec[:4]
        kind, margin = (spec[5], spec[6]) if len(spec) > 5 else (BETTER, None)
        pvs = [pv for i, pv in pair_verdicts if i == ci]
        states = {pv.verdict for pv in pvs}
        verdict = next((v for v in PRECEDENCE if v in states), "untested")  # no pairs: untested
        out.append(ClaimVerdict(cid, text, metric, protocol, verdict, pvs, kind, margin if kind == EQUIVALENT else None))
    return out


def _pair_p(pv: PairVerdict) -> float:
    """The p-value a tested pair contributes to the table's Holm family."""
    if pv.tost is not None:
        # the p of the conclusion the data point to: equivalence inside the margin, else outside
        tt = pv.tost
        return tt.p_tost if abs(tt.mean_diff) < tt.margin else tt.p_outside  # type: ignore[return-value]
    # two-sided use of one-sided tests: correct the smaller of the two directions
    st = pv.seed_test
    return min(1.0, 2 * min(st.p_greater, st.p_less))  # type: ignore[union-attr,type-var]
