"""Paired tests over seeds and queries, Holm correction, and claim verdicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as st

from xmrbench.stats.claims import Side, judge, per_query_scores
from xmrbench.stats.paired import holm, seed_ttest, signflip_test


def test_seed_ttest_matches_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 1, 5), rng.normal(9, 1, 5)
    res = seed_ttest(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert res.p_greater == pytest.approx(st.t.sf(t, df=len(d) - 1))
    assert res.p_less == pytest.approx(st.t.cdf(t, df=len(d) - 1))
    assert res.mean_diff == pytest.approx(d.mean()) and res.n == 5


def test_seed_ttest_edge_cases():
    assert seed_ttest([1.0], [0.0]) is None
    res = seed_ttest([2.0, 3.0], [1.0, 2.0])  # identical differences: zero variance
    assert res.p_greater == 0.0 and res.p_less == 1.0
    res = seed_ttest([1.0, 2.0], [1.0, 2.0])
    assert res.p_greater == 1.0 and res.p_less == 1.0
    with pytest.raises(ValueError):
        seed_ttest([1.0, 2.0], [1.0])


def exact_signflip(groups, weights):
    flat = [(w, x) for w, g in zip(weights, groups) for x in g]
    observed = sum(w * x for w, x in flat)
    ge = le = total = 0
    for signs in itertools.product((-1, 1), repeat=len(flat)):
        t = sum(s * w * x for s, (w, x) in zip(signs, flat))
        ge += t >= observed - 1e-12
        le += t <= observed + 1e-12
        total += 1
    return ge / total, le / total


def test_signflip_matches_exact_enumeration():
    rng = np.random.default_rng(1)
    groups = [rng.normal(0.3, 1, 6), rng.normal(0.1, 1, 5)]
    weights = [100 / 6, 100 / 5]
    exact_g, exact_l = exact_signflip(groups, weights)
    res = signflip_test(groups, weights=weights, n_resamples=20000, seed=3)
    # Monte Carlo p with 20000 resamples: standard error below 0.004
    assert res.p_greater == pytest.approx(exact_g, abs=0.015)
    assert res.p_less == pytest.approx(exact_l, abs=0.015)
    assert res.n == 11


def test_signflip_all_zero_differences_is_not_significant():
    res = signflip_test([np.zeros(10)], weights=[1.0], n_resamples=500)
    assert res.p_greater == 1.0 and res.p_less == 1.0


def test_holm_hand_checked():
    # p sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_per_query_scores_reproduce_metrics():
    rng = np.random.default_rng(2)
    ranks = {"i2t": rng.integers(0, 30, 40), "t2i": rng.integers(0, 30, 200)}
    groups, weights = per_query_scores("rsum", ranks)
    rsum = sum(w * g.sum() for w, g in zip(weights, groups))
    expected = sum(100 * np.mean(ranks[d] < k) for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert rsum == pytest.approx(expected)
    groups, weights = per_query_scores("t2i_r5", ranks)
    assert weights[0] * groups[0].sum() == pytest.approx(100 * np.mean(ranks["t2i"] < 5))
    assert per_query_scores("map", ranks) is None


def claim(*pairs, metric="rsum"):
    return ("c", "text", metric, "test", list(pairs))


def test_verdicts():
    better = Side({0: 12.0, 1: 13.0, 2: 12.5, 3: 13.2})
    worse = Side({0: 10.0, 1: 10.5, 2: 10.1, 3: 10.3})
    noisy = Side({0: 12.0, 1: 8.0, 2: 11.0, 3: 9.5})
    sides = {("a", "rsum", "test"): better, ("b", "rsum", "test"): worse, ("n", "rsum", "test"): noisy}
    [v] = judge([claim(("a", "b"))], sides)
    assert v.verdict == "holds" and v.pairs[0].seeds == [0, 1, 2, 3]
    [v] = judge([claim(("b", "a"))], sides)
    assert v.verdict == "contradicted"
    [v] = judge([claim(("n", "b"))], sides)
    assert v.verdict == "not significant"
    [v] = judge([claim(("a", "missing"))], sides)
    assert v.verdict == "untested" and "no results" in v.pairs[0].reason
    one = {("a", "rsum", "test"): Side({0: 1.0}), ("b", "rsum", "test"): Side({0: 0.0})}
    [v] = judge([claim(("a", "b"))], one)
    assert v.verdict == "untested" and "at least 2" in v.pairs[0].reason
    [v] = judge([claim(("a", "b"))], sides, comparable={("a", "b", "test"): False})
    assert v.verdict == "untested" and "protocols" in v.pairs[0].reason
    # all pairs must hold
    [v] = judge([claim(("a", "b"), ("n", "b"))], sides)
    assert v.verdict == "not significant"


def test_lower_is_better_metrics_flip_direction():
    a = Side({0: 2.0, 1: 2.1, 2: 2.0})
    b = Side({0: 5.0, 1: 5.5, 2: 5.2})
    [v] = judge([claim(("a", "b"), metric="t2i_medr")], {("a", "t2i_medr", "test"): a, ("b", "t2i_medr", "test"): b})
    assert v.verdict == "holds"


def test_query_test_uses_ranks():
    rng = np.random.default_rng(4)
    ranks_good = {s: {"i2t": rng.integers(0, 3, 50), "t2i": rng.integers(0, 3, 250)} for s in range(3)}
    ranks_bad = {s: {"i2t": rng.integers(0, 40, 50), "t2i": rng.integers(0, 40, 250)} for s in range(3)}
    a = Side({0: 290.0, 1: 291.0, 2: 289.0}, ranks_good)
    b = Side({0: 100.0, 1: 101.0, 2: 99.0}, ranks_bad)
    [v] = judge([claim(("a", "b"))], {("a", "rsum", "test"): a, ("b", "rsum", "test"): b})
    assert v.pairs[0].query_test is not None and v.pairs[0].query_test.p_greater < 0.01
    assert v.pairs[0].query_test.n == 3 * 300
