"""Paired tests over seeds and queries, Holm correction, and claim verdicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as st

from xmrbench.stats.claims import PRECEDENCE, Side, default_min_effect, judge, per_query_scores
from xmrbench.stats.paired import DETERMINISTIC, SIGNTEST, holm, seed_signtest, seed_test, seed_ttest, signflip_test


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
    with pytest.raises(ValueError, match="zero-variance"):
        seed_ttest([2.0, 3.0], [1.0, 2.0])  # identical differences: t is undefined
    with pytest.raises(ValueError):
        seed_ttest([1.0, 2.0], [1.0])


def test_seed_test_picks_the_rule():
    assert seed_test([1.0], [0.0]) is None
    # both sides equal across seeds: no p-value at all
    res = seed_test([50.2, 50.2, 50.2], [50.0, 50.0, 50.0])
    assert res.test == DETERMINISTIC and res.deterministic
    assert res.p_greater is None and res.p_less is None
    assert res.mean_diff == pytest.approx(0.2) and res.n == 3
    # float noise does not make a deterministic side random
    assert seed_test([50.2, 50.2 + 1e-12], [50.0, 50.0]).deterministic
    # constant difference, sides not deterministic: exact sign test, p = 2^-n
    res = seed_test([2.0, 3.0], [1.0, 2.0])
    assert res.test == SIGNTEST and res.p_greater == 0.25 and res.p_less == 1.0
    res = seed_test([1.0, 2.0, 5.0], [1.0, 2.0, 5.0])  # equal sides: no direction
    assert res.test == SIGNTEST and res.p_greater == 1.0 and res.p_less == 1.0
    # otherwise the t-test
    assert seed_test([1.0, 2.5, 2.0], [0.0, 1.0, 1.8]).test == seed_ttest([1.0, 2.5, 2.0], [0.0, 1.0, 1.8]).test


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("d", [0.7, -0.3, 0.0])
def test_seed_signtest_matches_exact_enumeration(n, d):
    diffs = [d] * n
    res = seed_signtest(diffs)
    means = [np.mean([s * x for s, x in zip(signs, diffs)]) for signs in itertools.product((-1, 1), repeat=n)]
    assert res.p_greater == pytest.approx(np.mean([m >= d - 1e-12 for m in means]))
    assert res.p_less == pytest.approx(np.mean([m <= d + 1e-12 for m in means]))
    assert min(res.p_greater, res.p_less) >= 0.5**n  # never below 1/2^n
    with pytest.raises(ValueError):
        seed_signtest([1.0, 2.0])


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


def test_contradicted_outranks_untested_outranks_not_significant():
    assert PRECEDENCE == ("contradicted", "untested", "not significant", "holds")
    better = Side({0: 12.0, 1: 13.0, 2: 12.5, 3: 13.2})
    worse = Side({0: 10.0, 1: 10.5, 2: 10.1, 3: 10.3})
    noisy = Side({0: 12.0, 1: 8.0, 2: 11.0, 3: 9.5})
    sides = {("a", "rsum", "test"): better, ("b", "rsum", "test"): worse, ("n", "rsum", "test"): noisy}
    # one contradicted pair, one pair that cannot be tested: contradicted, in either order
    for pairs in ([("b", "a"), ("a", "missing")], [("a", "missing"), ("b", "a")]):
        [v] = judge([claim(*pairs)], sides)
        assert v.verdict == "contradicted"
        assert [p.verdict for p in v.pairs if p.better == "a"] == ["untested"]
    # untested beats not significant and holds
    [v] = judge([claim(("a", "b"), ("n", "b"), ("a", "missing"))], sides)
    assert [p.verdict for p in v.pairs] == ["holds", "not significant", "untested"] and v.verdict == "untested"
    [v] = judge([claim(("a", "b"), ("a", "missing"))], sides)
    assert v.verdict == "untested"
    [v] = judge([claim(("a", "b"), ("b", "a"), ("n", "b"))], sides)
    assert v.verdict == "contradicted"


def test_deterministic_pairs_are_judged_against_the_minimum_effect():
    # CCA-like baselines: equal across seeds; no ranks stored, so the fallback (0.1 points) applies
    sides = {
        ("x", "rsum", "test"): Side({0: 50.3, 1: 50.3}),
        ("y", "rsum", "test"): Side({0: 50.1, 1: 50.1}),
        ("z", "rsum", "test"): Side({0: 50.0, 1: 50.0}),
    }
    [v] = judge([claim(("x", "z"))], sides)  # 0.3 > 0.1
    pv = v.pairs[0]
    assert v.verdict == "holds" and pv.deterministic and pv.p_adjusted is None
    assert pv.min_effect == pytest.approx(0.1) and "deterministic, equal across seeds" in pv.reason
    assert "deterministic" in pv.evidence and pv.evidence.endswith("→ holds")
    [v] = judge([claim(("z", "x"))], sides)
    assert v.verdict == "contradicted"
    # a gap of exactly one unit (0.1) or less never decides, whatever float noise says
    [v] = judge([claim(("y", "z"))], sides)
    assert v.verdict == "not significant" and "<= minimum effect" in v.pairs[0].reason
    [v] = judge([claim(("z", "y"))], sides)
    assert v.verdict == "not significant"
    # an explicit minimum effect replaces the default
    [v] = judge([claim(("x", "z"))], sides, min_effect={"rsum": 0.5})
    assert v.verdict == "not significant" and v.pairs[0].min_effect == 0.5
    [v] = judge([claim(("y", "z"))], sides, min_effect={"rsum": 0.05})
    assert v.verdict == "holds"
    # deterministic pairs have no p-value and stay out of the Holm family
    tested = Side({0: 12.0, 1: 13.0, 2: 12.5, 3: 13.2})
    base = Side({0: 10.0, 1: 10.5, 2: 10.1, 3: 10.3})
    more = {**sides, ("a", "rsum", "test"): tested, ("b", "rsum", "test"): base}
    [alone] = judge([claim(("a", "b"))], more)
    [v] = judge([claim(("a", "b"), ("x", "z"))], more)
    assert v.pairs[0].p_adjusted == pytest.approx(alone.pairs[0].p_adjusted) and v.verdict == "holds"


def test_deterministic_minimum_effect_is_one_query_when_ranks_are_stored():
    ranks = {s: {"i2t": [0] * 200, "t2i": [0] * 1000} for s in (0, 1)}
    assert default_min_effect("rsum", ranks[0]) == (pytest.approx(0.5), "one image query of 200")
    assert default_min_effect("t2i_r5", ranks[0])[0] == pytest.approx(0.1)
    assert default_min_effect("i2t_meanr", ranks[0])[0] == pytest.approx(1 / 200)
    assert default_min_effect("t2i_medr", ranks[0])[0] == 1.0
    assert default_min_effect("avg_map")[0] == 0.001
    assert default_min_effect("i2t_r1")[0] == 0.1
    sides = {
        ("x", "t2i_r1", "test"): Side({0: 30.2, 1: 30.2}, ranks),
        ("y", "t2i_r1", "test"): Side({0: 30.0, 1: 30.0}, ranks),
    }
    [v] = judge([claim(("x", "y"), metric="t2i_r1")], sides)  # two captions of 1000
    assert v.verdict == "holds" and v.pairs[0].min_effect == pytest.approx(0.1)
    assert v.pairs[0].query_test is not None  # still shown beside
    # lower is better: medr 2 against 4 holds, against 3 (one rank) does not decide
    medr = {(c, "t2i_medr", "test"): Side({0: r, 1: r}) for c, r in (("x", 2.0), ("y", 3.0), ("z", 4.0))}
    [v] = judge([claim(("x", "z"), metric="t2i_medr")], medr)
    assert v.verdict == "holds" and v.pairs[0].seed_test.mean_diff == pytest.approx(2.0)
    [v] = judge([claim(("x", "y"), metric="t2i_medr")], medr)
    assert v.verdict == "not significant"
    [v] = judge([claim(("z", "x"), metric="t2i_medr")], medr)
    assert v.verdict == "contradicted"


def test_zero_variance_difference_is_never_p_zero():
    # the sides move together across seeds: t is undefined, the exact sign test decides
    a = Side({0: 12.1, 1: 11.1, 2: 13.1})
    b = Side({0: 12.0, 1: 11.0, 2: 13.0})
    [v] = judge([claim(("a", "b"))], {("a", "rsum", "test"): a, ("b", "rsum", "test"): b})
    pv = v.pairs[0]
    assert pv.seed_test.test == SIGNTEST and not pv.deterministic
    assert pv.seed_test.p_greater == pytest.approx(1 / 8)
    assert pv.p_adjusted == pytest.approx(1 / 4) and v.verdict == "not significant"
    # six seeds: two-sided 2 * 2^-6 = 1/32 < 0.05, so an exact sign test can support a claim
    a6 = Side({s: 10.0 + s + 0.5 for s in range(6)})
    b6 = Side({s: 10.0 + s for s in range(6)})
    [v] = judge([claim(("a", "b"))], {("a", "rsum", "test"): a6, ("b", "rsum", "test"): b6})
    assert v.pairs[0].p_adjusted == pytest.approx(1 / 32) and v.verdict == "holds"
    [v] = judge([claim(("b", "a"))], {("a", "rsum", "test"): a6, ("b", "rsum", "test"): b6})
    assert v.verdict == "contradicted"


def test_evidence_lines():
    better = Side({0: 12.0, 1: 13.0, 2: 12.5})
    worse = Side({0: 10.0, 1: 10.5, 2: 10.1})
    [v] = judge([claim(("a", "b"), ("a", "missing"))], {("a", "rsum", "test"): better, ("b", "rsum", "test"): worse})
    tested, missing = (pv.evidence for pv in v.pairs)
    assert tested.startswith("a vs b: Δ=+2.3") and "t-test, p_holm=" in tested and tested.endswith("→ holds")
    assert missing == "a vs missing: no results for 'missing'"
