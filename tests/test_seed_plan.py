"""The seed plan of a not-significant claim pair (``paired.seeds_for_power``), checked
against the textbook sample sizes of the one-sample t-test, a Monte Carlo simulation of
the test itself, and the exact sign-flip test worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from xmrbench.stats import claims
from xmrbench.stats.paired import PLAN_MAX_SEEDS, seeds_for_power


@pytest.mark.parametrize(("effect", "expected"), [(0.5, 34), (0.8, 15), (1.0, 10), (-0.5, 34)])
def test_textbook_sample_sizes(effect: float, expected: int) -> None:
    # the tabulated sizes for a two-sided one-sample (paired) t-test, alpha 0.05, power 0.8
    assert seeds_for_power(effect, 1.0, level=0.05) == expected
    assert seeds_for_power(10 * effect, 10.0, level=0.05) == expected  # only effect / sd matters


def _simulated_power(effect: float, sd: float, n: int, level: float, reps: int, rng: np.random.Generator) -> float:
    """The fraction of simulated experiments whose two-sided t-test rejects in the effect's direction."""
    d = rng.normal(effect, sd, size=(reps, n))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    return float(np.mean(np.sign(effect) * t > st.t.ppf(1 - level / 2, n - 1)))


@pytest.mark.parametrize(("effect", "sd", "level"), [(20.6, 6.3, 0.05 / 16), (3.0, 7.0, 0.05 / 5), (-1.0, 1.5, 0.01)])
def test_plan_is_the_smallest_n_with_the_power_by_simulation(effect: float, sd: float, level: float) -> None:
    n = seeds_for_power(effect, sd, level=level)
    assert n is not None and n >= 2
    reps = 40_000
    rng = np.random.default_rng(11)
    slack = 4 * np.sqrt(0.8 * 0.2 / reps)  # four Monte Carlo standard errors
    assert _simulated_power(effect, sd, n, level, reps, rng) >= 0.8 - slack
    if n > 2:
        assert _simulated_power(effect, sd, n - 1, level, reps, rng) < 0.8 + slack


def test_zero_spread_uses_the_exact_sign_test() -> None:
    # two-sided p of the sign-flip test with n equal differences: 2^(1 - n)
    # level 0.05 / 16 = 0.003125: 2^-8 = 0.0039 is not below it, 2^-9 = 0.00195 is: n = 10
    assert seeds_for_power(2.0, 0.0, level=0.05 / 16) == 10
    assert seeds_for_power(-2.0, 0.0, level=0.05) == 6  # n = 6: 2^-5 = 0.031 < 0.05 <= 2^-4 = 0.0625


def test_no_plan_without_an_effect_or_beyond_the_cap() -> None:
    assert seeds_for_power(0.0, 1.0, level=0.05) is None
    assert seeds_for_power(1e-3, 1.0, level=0.05) is None  # needs about 8 million seeds
    assert seeds_for_power(0.2, 1.0, level=0.05, max_seeds=PLAN_MAX_SEEDS) == 199  # textbook, d = 0.2
    with pytest.raises(ValueError):
        seeds_for_power(1.0, -1.0, level=0.05)
    with pytest.raises(ValueError):
        seeds_for_power(1.0, 1.0, level=1.5)


def test_stricter_level_needs_more_seeds() -> None:
    plans = [seeds_for_power(1.0, 1.0, level=a) for a in (0.05, 0.01, 0.001)]
    assert plans[0] < plans[1] < plans[2]  # type: ignore[operator]


def test_judge_plans_the_not_significant_pairs_only() -> None:
    side = claims.Side
    sides = {
        ("a", "rsum", "test"): side({0: 410.0, 1: 412.5, 2: 409.0}),
        ("b", "rsum", "test"): side({0: 400.0, 1: 401.5, 2: 399.0}),  # a - b = 10, 11, 10: holds
        ("c", "rsum", "test"): side({0: 401.0, 1: 398.0, 2: 404.0}),  # c - b = 1, -3.5, 5: not significant
    }
    verdicts = claims.judge([("x", "a beats b", "rsum", "test", [("a", "b")]),
                             ("y", "c beats b", "rsum", "test", [("c", "b")])], sides)
    held, open_ = verdicts[0].pairs[0], verdicts[1].pairs[0]
    assert held.verdict == "holds" and held.seeds_for_power is None and held.plan_level is None
    assert open_.verdict == "not significant"
    diffs = np.array([1.0, -3.5, 5.0])
    assert open_.diff_sd == pytest.approx(diffs.std(ddof=1))
    assert open_.plan_level == pytest.approx(0.05 / 2)  # two tested pairs in the family
    assert open_.seeds_for_power == seeds_for_power(diffs.mean(), diffs.std(ddof=1), level=0.025)
    assert f"needs {open_.seeds_for_power} seeds" in open_.evidence


def test_the_console_shows_the_largest_plan_of_a_claim_left_not_significant() -> None:
    from xmrbench.report.console import _claim_plan

    def pair(verdict: str, plan: int | None, level: float | None = 0.01) -> claims.PairVerdict:
        return claims.PairVerdict("a", "b", verdict, [0, 1, 2], seeds_for_power=plan, plan_level=level)

    def claim(verdict: str, *pairs: claims.PairVerdict) -> claims.ClaimVerdict:
        return claims.ClaimVerdict("c", "a beats b", "rsum", "test", verdict, list(pairs))

    assert _claim_plan(claim("not significant", pair("not significant", 6), pair("not significant", 29),
                             pair("holds", None, None))) == "29"
    assert _claim_plan(claim("not significant", pair("not significant", 6), pair("not significant", None))) == ">1000"
    assert _claim_plan(claim("holds", pair("holds", None, None))) == "-"
    assert _claim_plan(claim("untested", pair("not significant", 6), pair("untested", None, None))) == "-"
