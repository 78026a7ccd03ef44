"""The gate's learning layer: trained models far from chance, compared by their seed spread.

Training amplifies last-bit differences between BLAS builds, CPU vendors and thread
counts: on another machine a run is, for the gate's purposes, a fresh draw from the
seed distribution of its cell. So the gate compares *means over seeds* and derives its
tolerance from the *spread over seeds* measured when the reference was recorded:

- the reference holds the headline metric (rsum for image-sentence retrieval, ``avg_map``
  for label retrieval) of ``n_ref`` seeds: mean ``m_ref``, sample standard deviation
  ``s_ref``;
- the gate runs ``n`` of those seeds and compares their mean ``m`` with ``m_ref``;
- under "nothing changed", ``(m - m_ref) / (s_ref * sqrt(1/n + 1/n_ref))`` follows a
  Student t distribution with ``n_ref - 1`` degrees of freedom, so the tolerance
  ``t_{1 - alpha/2, n_ref - 1} * s_ref * sqrt(1/n + 1/n_ref)`` is exceeded with
  probability ``alpha`` per check;
- it is never below a floor of two queries' worth in each direction (a deterministic
  model has ``s_ref = 0``, and a BLAS difference may still flip a near-tie): for rsum
  the recalls one image query and one caption query can move, twice; for ``avg_map``
  ``1/n_images + 1/n_texts`` (a query's AP lies in [0, 1] and ``avg_map`` is the mean of
  the two directions' mAPs; :mod:`xmrbench.gate.chance`).

A reference is recorded only when the model is clearly above chance: the whole band
``m_ref ± tolerance`` lies above the learning bar, ``BAR x`` the chance level of the
split. Then every run within tolerance also clears the bar, and an untrained or broken
model, which scores near chance, is outside the band.

A cell the paper itself shows failing is declared ``near_chance`` in its recipe. Its
reference mean must be at most ``NEAR x`` chance (halfway between chance and the bar),
and the gate checks that the mean stays below the bar. The band is not used there: on a
small split a model at chance spreads too widely (rsum 32 ± 7 on 100 images) for a band
of five standard deviations to stay below twice chance, while the mean of three such
runs exceeds the bar with negligible probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

from xmrbench.core.metrics import keys as K

#: The seeds the gate runs, and the seeds a reference is recorded over.
GATE_SEEDS: tuple[int, ...] = (0, 1, 2)
REFERENCE_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
#: False-alarm probability of one learning check when nothing changed: with about a hundred
#: checks in a gate run, about one run in a hundred has a false alarm on a new machine.
ALPHA = 1e-4
#: The learning bar, as a multiple of the split's chance level.
BAR = 2.0
#: A near-chance cell's reference mean is at most this multiple of chance.
NEAR = 1.5
#: The tolerance floor, in queries' worth (one image query and one caption query each).
FLOOR_QUERIES = 2


def fmt(value: float, metric: str = K.RSUM) -> str:
    """``value`` of ``metric`` as the gate's messages print it: fractions (mAP) to three
    decimals, everything else (rsum) to one."""
    spec = K.METRICS.get(metric)
    return f"{value:.3f}" if spec is not None and spec.scale == "fraction" else f"{value:.1f}"


def tolerance(values: Sequence[float], *, n_gate: int, floor: float, alpha: float = ALPHA) -> float:
    """The largest |mean of ``n_gate`` new seeds - mean of ``values``| that passes.

    ``values`` are the reference seeds' values of one metric (at least 2).
    """
    n_ref = len(values)
    if n_ref < 2:
        raise ValueError("a spread needs at least two reference seeds")
    sd = float(np.std(np.asarray(values, dtype=np.float64), ddof=1))
    t = float(_st.t.ppf(1.0 - alpha / 2.0, df=n_ref - 1))
    return max(floor, t * sd * math.sqrt(1.0 / n_gate + 1.0 / n_ref))


@dataclass(frozen=True)
class LearningCheck:
    """One (recipe, cell, protocol): the reference's band against this run's mean."""

    recipe: str
    cell: str
    protocol: str
    metric: str
    expect: str  # "learns" or "near_chance"
    chance: float
    bar: float
    reference_mean: float
    tolerance: float
    current: tuple[float, ...]  # this run's values, one per gate seed

    @property
    def current_mean(self) -> float:
        return float(np.mean(self.current))

    @property
    def delta(self) -> float:
        return self.current_mean - self.reference_mean

    @property
    def within(self) -> bool:
        """Within the tolerance of the reference (a near-chance cell is judged by the bar alone)."""
        return self.expect != "learns" or abs(self.delta) <= self.tolerance

    @property
    def on_the_right_side(self) -> bool:
        """Clears the learning bar (or, for a near-chance cell, stays below it)."""
        return self.current_mean >= self.bar if self.expect == "learns" else self.current_mean < self.bar

    @property
    def passed(self) -> bool:
        return self.within and self.on_the_right_side

    def _digits(self) -> int:
        return 4 if K.METRICS.get(self.metric) is not None and K.METRICS[self.metric].scale == "fraction" else 2

    def summary(self) -> str:
        """The mean now against the reference band, then why the check failed."""
        d = self._digits()
        parts = [f"now {self.current_mean:.{d}f}, reference {self.reference_mean:.{d}f} ± {self.tolerance:.{d}f}"]
        if not self.within:
            parts.append(f"{self.delta:+.{d}f} is beyond the tolerance")
        if not self.on_the_right_side:
            side = "below" if self.expect == "learns" else "above"
            parts.append(f"{side} the learning bar {self.bar:.{d}f} (chance {self.chance:.{d}f})")
        return "; ".join(parts)

    def why(self) -> str:
        """One line saying why a failed check failed."""
        parts = []
        d = self._digits()
        if not self.within:
            parts.append(f"mean {self.current_mean:.{d}f} is {self.delta:+.{d}f} from the reference "
                         f"{self.reference_mean:.{d}f} (tolerance {self.tolerance:.{d}f})")
        if not self.on_the_right_side:
            side = "below" if self.expect == "learns" else "above"
            parts.append(f"{side} the learning bar {self.bar:.{d}f} (chance {self.chance:.{d}f})")
        return "; ".join(parts) or "passed"


def band_problem(*, expect: str, mean: float, tol: float, bar: float, chance: float,
                 metric: str = K.RSUM) -> str | None:
    """Why a reference cannot be recorded, or None: see the module docstring."""
    lo, hi = mean - tol, mean + tol
    if expect == "learns" and lo < bar:
        return (f"its band [{fmt(lo, metric)}, {fmt(hi, metric)}] is not above the learning bar {fmt(bar, metric)} "
                f"({BAR:g} x chance {fmt(chance, metric)}): the smoke profile leaves it too close to chance to tell "
                "a trained model from an untrained one (train it longer, or declare it near_chance with the "
                "paper's reason)")
    if expect == "near_chance" and mean > NEAR * chance:
        return (f"it is declared near chance but its mean {fmt(mean, metric)} is above {NEAR:g} x chance "
                f"({fmt(NEAR * chance, metric)}): it learns here")
    return None
