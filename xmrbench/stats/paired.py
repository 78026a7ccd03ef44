"""Paired significance tests for "method A beats method B" claims.

- over seeds: a one-sided paired t-test on the per-seed metric difference
  (``scipy.stats.ttest_rel``); this is the test behind a verdict, because seed
  variance (training randomness) is the variance a reproduction must beat;
- over queries: a paired sign-flip randomization test on per-query contributions
  to the metric, pooled over seeds; it measures test-set sampling noise only,
  conditional on the trained models, and is reported beside the seed test;
- Holm's step-down correction for the several claims of one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class TestResult:
    test: str
    n: int  # paired units (seeds, or seed x query pairs)
    mean_diff: float  # mean of better - worse
    p_greater: float  # one-sided p for "better > worse"
    p_less: float  # one-sided p for "better < worse"


def seed_ttest(better: Sequence[float], worse: Sequence[float]) -> TestResult | None:
    """One-sided paired t-test over seeds; None with fewer than 2 pairs."""
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("better and worse must be 1-D and paired")
    n = len(a)
    if n < 2:
        return None
    diff = a - b
    mean = float(diff.mean())
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):  # zero variance: the sign decides
        pg = 0.0 if mean > 0 else 1.0
        pl = 0.0 if mean < 0 else 1.0
    else:
        pg = float(_st.ttest_rel(a, b, alternative="greater").pvalue)
        pl = float(_st.ttest_rel(a, b, alternative="less").pvalue)
    return TestResult("paired t-test over seeds (one-sided)", n, mean, pg, pl)


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
