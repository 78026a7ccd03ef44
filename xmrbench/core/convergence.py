"""Whether a training run converged: the plateau criterion over its dev selection curve.

A run has converged when its best dev selection score (rsum, or R@1 + R@5) gained
less than ``threshold`` (relative) over its last ``window`` epochs:

    gain = (max(s[-window:]) - max(s[:-window])) / |max(s[:-window])|

A run of ``window`` epochs or fewer has nothing to compare with and has not converged.
A closed-form fit (CCA, say) has converged by construction; an ensemble has
converged when every member has. The record travels with every result
(``Convergence.to_dict``) and claim verdicts refuse pairs with a side that has not.
The window and threshold are ``train.plateau_window`` and ``train.plateau_gain``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

PLATEAU, CLOSED_FORM, ENSEMBLE = "plateau", "closed form", "ensemble"


@dataclass(frozen=True)
class Convergence:
    """One run's convergence record."""

    converged: bool
    criterion: str  # PLATEAU, CLOSED_FORM or ENSEMBLE
    reason: str  # one line for a report
    epochs: int | None = None  # epochs trained (plateau)
    gain: float | None = None  # relative gain of the best dev score over the window
    window: int | None = None
    threshold: float | None = None
    stopped_early: bool = False  # training ended at the plateau before its epoch budget

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Convergence:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def plateau_gain(scores: Sequence[float], window: int) -> float | None:
    """The relative gain of the best score over the last ``window`` epochs (None: too few epochs)."""
    if len(scores) <= window:
        return None
    before, after = max(scores[:-window]), max(scores[-window:])
    return (after - before) / max(abs(before), 1e-12)


def has_plateaued(scores: Sequence[float], window: int, threshold: float) -> bool:
    gain = plateau_gain(scores, window)
    return gain is not None and gain < threshold


def of_curve(
    scores: Sequence[float],
    *,
    window: int,
    threshold: float,
    max_epochs: int | None = None,
    metric: str = "dev score",
) -> Convergence:
    """The plateau criterion applied to a run's dev selection scores, one per epoch."""
    n = len(scores)
    gain = plateau_gain(scores, window)
    stopped_early = max_epochs is not None and n < max_epochs
    common = dict(criterion=PLATEAU, epochs=n, gain=gain, window=window, threshold=threshold, stopped_early=stopped_early)
    if gain is None:
        return Convergence(False, reason=f"{n} epoch(s): the criterion needs more than {window}", **common)
    rule = f"best {metric} {gain:+.1%} over the last {window} epochs (threshold {threshold:.1%})"
    if gain < threshold:
        where = f"stopped at epoch {n} of {max_epochs}" if stopped_early else f"{n} epochs"
        return Convergence(True, reason=f"plateau: {rule}; {where}", **common)
    return Convergence(False, reason=f"still improving: {rule} after {n} epochs", **common)


def closed_form() -> Convergence:
    return Convergence(True, CLOSED_FORM, "fitted in closed form")


def of_members(members: Mapping[str, Convergence | None]) -> Convergence:
    """An ensemble's record: converged when every member has (an unknown member: not converged)."""
    missing = [m for m, c in members.items() if c is None]
    behind = [m for m, c in members.items() if c is not None and not c.converged]
    if missing or behind:
        parts = ([f"not converged: {', '.join(behind)}"] if behind else []) + (
            [f"no record: {', '.join(missing)}"] if missing else [])
        return Convergence(False, ENSEMBLE, "members " + "; ".join(parts))
    return Convergence(True, ENSEMBLE, f"every member converged ({', '.join(members)})")


def of_record(
    recorded: Mapping[str, Any] | None,
    curves: Mapping[str, Sequence[float]],
    train: Mapping[str, Any],
    defaults: tuple[int, float],
) -> Convergence | None:
    """A stored run's record: the one it carries, else derived from its curves and train
    config (``defaults``: the window and threshold a config without them means).
    None: nothing to judge by (an ensemble written before records existed)."""
    if recorded is not None:
        return Convergence.from_dict(recorded)
    if "fit_s" in curves:
        return closed_form()
    if "dev_score" not in curves:
        return None
    window = int(train.get("plateau_window", defaults[0]))
    threshold = float(train.get("plateau_gain", defaults[1]))
    return of_curve(list(curves["dev_score"]), window=window, threshold=threshold, max_epochs=train.get("epochs"))
