"""Paired significance tests for "method A beats method B" claims.

- over seeds: the test behind a verdict, because seed variance (training
  randomness) is the variance a reproduction must beat. ``seed_test`` picks one
  of three rules from the per-seed values (n seeds, d_s = better_s - worse_s):

  * both sides equal across seeds (deterministic methods such as CCA or the s_g
    baseline): no test at all, the result says "deterministic, equal across
    seeds" and carries no p-value; the caller judges the exact difference
    against a minimum effect (``claims.min_effect``);
  * d_s equal across seeds but the sides are not: the t statistic is undefined
    (zero variance), so an exact sign-flip test over seeds is used: of the 2^n
    equally likely sign patterns only one reaches the observed mean, so
    p = 2^-n one-sided (never below it; 1/4 with two seeds, 1/8 with three);
  * otherwise a one-sided paired t-test, t = mean(d) / (sd(d) / sqrt(n)) with
    n - 1 degrees of freedom (``scipy.stats.ttest_rel``);
- over queries: a paired sign-flip randomization test on per-query contributions
  to the metric, pooled over seeds; it measures test-set sampling noise only,
  conditional on the trained models, and is reported beside the seed test;
- over seeds, for "A matches B within a margin m" claims: ``seed_tost``, two one-sided
  paired t-tests (TOST) on d_s = a_s - b_s, H0a: mean(d) <= -m and H0b: mean(d) >= +m,
  p_tost = max(p_a, p_b); and the opposite pair of one-sided tests, that the mean lies
  above +m or below -m, for evidence that the difference exceeds the margin;
- Holm's step-down correction for the several claims of one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

TTEST = "paired t-test over seeds (one-sided)"
SIGNTEST = "exact sign-flip test over seeds (one-sided; zero-variance difference)"
DETERMINISTIC = "deterministic, equal across seeds"

#: Values closer than this (relative to their magnitude, at least 1) count as equal:
#: float summation noise, never a real difference of a metric.
EQUAL_RTOL = 1e-9


@dataclass(frozen=True)
class TestResult:
    test: str
    n: int  # paired units (seeds, or seed x query pairs)
    mean_diff: float  # mean of better - worse
    p_greater: float | None  # one-sided p for "better > worse"; None: no test (deterministic)
    p_less: float | None  # one-sided p for "better < worse"; None: no test (deterministic)

    @property
    def deterministic(self) -> bool:
        return self.test == DETERMINISTIC


def _constant(x: np.ndarray) -> bool:
    """Whether every entry of ``x`` equals the first, up to float noise."""
    return bool(np.ptp(x) <= EQUAL_RTOL * max(1.0, float(np.abs(x).max())))


def _paired(better: Sequence[float], worse: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("better and worse must be 1-D and paired")
    return a, b


def seed_ttest(better: Sequence[float], worse: Sequence[float]) -> TestResult | None:
    """One-sided paired t-test over seeds; None with fewer than 2 pairs.

    Raises ValueError when the differences have zero variance (t is undefined
    there; ``seed_test`` uses the exact sign-flip test instead).
    """
    a, b = _paired(better, worse)
    if len(a) < 2:
        return None
    diff = a - b
    if _constant(diff):
        raise ValueError("zero-variance difference: the paired t-test is undefined")
    pg = float(_st.ttest_rel(a, b, alternative="greater").pvalue)
    pl = float(_st.ttest_rel(a, b, alternative="less").pvalue)
    return TestResult(TTEST, len(a), float(diff.mean()), pg, pl)


def seed_signtest(diff: Sequence[float]) -> TestResult:
    """Exact sign-flip test over seeds of a difference that is equal across seeds.

    ``diff``: (n,) per-seed differences better - worse, all equal to d. Under the
    null each d_s is symmetric around 0, so each of the 2^n sign patterns has
    probability 2^-n; T = mean(+-d) >= d only for the all-plus pattern, so
    P(T >= d) = 2^-n when d > 0 (and 1 when d <= 0), symmetrically for P(T <= d).
    """
    d = np.asarray(diff, dtype=float)
    if d.ndim != 1 or len(d) == 0 or not _constant(d):
        raise ValueError("seed_signtest takes a non-empty difference that is equal across seeds")
    n, mean = len(d), float(d.mean())
    tol = EQUAL_RTOL * max(1.0, abs(mean))
    floor = 0.5**n
    pg = floor if mean > tol else 1.0
    pl = floor if mean < -tol else 1.0
    return TestResult(SIGNTEST, n, mean, pg, pl)


def seed_test(better: Sequence[float], worse: Sequence[float]) -> TestResult | None:
    """The seed-level evidence for one pair; None with fewer than 2 paired seeds.

    Deterministic (both sides equal across seeds): no p-value (``DETERMINISTIC``);
    zero-variance difference otherwise: ``seed_signtest``; else ``seed_ttest``.
    """
    a, b = _paired(better, worse)
    if len(a) < 2:
        return None
    if _constant(a) and _constant(b):
        return TestResult(DETERMINISTIC, len(a), float((a - b).mean()), None, None)
    if _constant(a - b):
        return seed_signtest(a - b)
    return seed_ttest(a, b)


TOST = "two one-sided paired t-tests over seeds (TOST)"


@dataclass(frozen=True)
class TostResult:
    """Equivalence evidence for one pair: the mean of d_s = a_s - b_s against a margin m.

    ``p_lower``: one-sided p of H0a mean(d) <= -m (against mean(d) > -m);
    ``p_upper``: of H0b mean(d) >= +m (against mean(d) < +m); ``p_above``: of
    mean(d) <= +m (against mean(d) > +m); ``p_below``: of mean(d) >= -m (against
    mean(d) < -m). All None when the difference is equal across seeds (``exact``):
    the t statistic is undefined there and the exact difference decides.
    """

    n: int  # paired seeds
    mean_diff: float  # mean of a - b
    margin: float
    p_lower: float | None
    p_upper: float | None
    p_above: float | None
    p_below: float | None

    @property
    def exact(self) -> bool:
        return self.p_lower is None

    @property
    def p_tost(self) -> float | None:
        """The TOST p-value, max(p_lower, p_upper): small when -m < mean(d) < +m."""
        return None if self.p_lower is None or self.p_upper is None else max(self.p_lower, self.p_upper)

    @property
    def p_outside(self) -> float | None:
        """Two-sided p that |mean(d)| > m: the smaller one-sided p, doubled (at most 1)."""
        if self.p_above is None or self.p_below is None:
            return None
        return min(1.0, 2 * min(self.p_above, self.p_below))


def seed_tost(a: Sequence[float], b: Sequence[float], margin: float) -> TostResult | None:
    """Equivalence tests over seeds of a against b within ``margin``; None with fewer than 2 pairs.

    One-sample t-tests of d = a - b (n - 1 degrees of freedom,
    ``scipy.stats.ttest_1samp``) against -margin and +margin. A difference equal
    across seeds (zero spread, including deterministic sides) has no test: the
    result carries the exact mean and no p-values.
    """
    x, y = _paired(a, b)
    if len(x) < 2:
        return None
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be > 0, not {margin!r}")
    d = x - y
    mean = float(d.mean())
    if _constant(d):
        return TostResult(len(d), mean, float(margin), None, None, None, None)

    def p(popmean: float, alternative: str) -> float:
        return float(_st.ttest_1samp(d, popmean, alternative=alternative).pvalue)

    return TostResult(
        len(d), mean, float(margin),
        p_lower=p(-margin, "greater"), p_upper=p(margin, "less"),
        p_above=p(margin, "greater"), p_below=p(-margin, "less"),
    )


def signflip_test(
    diffs: Sequence[np.ndarray], *, weights: Sequence[float], n_resamples: int = 2000, seed: int = 0,
    chunk: int = 250,
) -> TestResult:
    """Paired sign-flip randomization test of ``T = sum_g w_g * sum(diffs[g])``.

    ``diffs[g]`` holds the per-query differences (better - worse) of query group g
    (e.g. image queries and caption queries), ``weights[g]`` their weight in the
    metric (e.g. 100 / n_queries for a recall in percent). Under the null each
    query's difference is symmetric around zero, so its sign is flipped at random.
    p-values use the (count + 1) / (resamples + 1) convention, never 0.
    """
    rng = np.random.default_rng(seed)
    groups = [np.asarray(d, dtype=np.float64).ravel() for d in diffs]
    observed = float(sum(w * g.sum() for w, g in zip(weights, groups)))
    n = int(sum(len(g) for g in groups))
    ge = le = 0
    done = 0
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        total = np.zeros(m)
        for w, g in zip(weights, groups):
            if len(g) == 0:
                continue
            signs = rng.integers(0, 2, size=(m, len(g)), dtype=np.int8) * 2 - 1
            total += w * (signs @ g)
        ge += int((total >= observed - 1e-12).sum())
        le += int((total <= observed + 1e-12).sum())
        done += m
    return TestResult(
        "sign-flip randomization over queries (one-sided)",
        n,
        observed,
        (ge + 1) / (n_resamples + 1),
        (le + 1) / (n_resamples + 1),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


#: The power a seed plan aims at (``seeds_for_power``): the usual planning convention.
PLAN_POWER = 0.8
#: The most seeds a plan states; more reads as "beyond" (an effect too small to chase).
PLAN_MAX_SEEDS = 1000


def seeds_for_power(
    effect: float, sd: float, *, level: float, power: float = PLAN_POWER, max_seeds: int = PLAN_MAX_SEEDS
) -> int | None:
    """The fewest paired seeds ``n >= 2`` at which the seed test would decide for the
    direction of ``effect`` at significance ``level`` with probability ``power``.

    A planning estimate: it takes the per-seed differences to be normal with mean
    ``effect`` and standard deviation ``sd`` (in practice the observed ones, which a
    few seeds estimate loosely). The two-sided paired t-test at ``level`` rejects in the
    effect's direction when ``t > t(1 - level/2, n - 1)``, and ``t`` follows a
    noncentral t distribution with ``n - 1`` degrees of freedom and noncentrality
    ``|effect| / sd * sqrt(n)``. With ``sd == 0`` the difference is the same at every
    seed and the exact sign-flip test decides (``seed_signtest``): its two-sided p is
    ``2^(1 - n)``, below ``level`` from ``n > 1 + log2(1 / level)`` on, with certainty.
    None: no effect (``effect == 0``) or more than ``max_seeds`` seeds.
    """
    if not (0.0 < level < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"level and power must lie in (0, 1); got {level}, {power}")
    if sd < 0 or not np.isfinite(effect) or not np.isfinite(sd):
        raise ValueError(f"need a finite effect and sd >= 0; got {effect}, {sd}")
    if effect == 0.0:
        return None
    if sd == 0.0:
        n = 2
        while 2.0 ** (1 - n) >= level:
            n += 1
        return n if n <= max_seeds else None
    n = np.arange(2, max_seeds + 1)
    df = n - 1
    critical = _st.t.ppf(1.0 - level / 2.0, df)
    reached = _st.nct.sf(critical, df, abs(effect) / sd * np.sqrt(n)) >= power
    return int(n[np.argmax(reached)]) if reached.any() else None
