"""Lint a recipe's printed paper numbers: recalls must not fall as k grows and
rsum (or the mAP average) must equal what its parts add up to, within rounding.

The paper's numbers are data and are never corrected; an inconsistency becomes a
warning that names the table, the row and the protocol. A row may acknowledge a known
inconsistency of the paper (``inconsistent: {metric: why}``): the lint then lists it as
acknowledged rather than warning, and warns instead if the acknowledged inconsistency
is not there (a stale or mistyped acknowledgement).
"""

from __future__ import annotations

from xmrbench.core.metrics import keys as K
from xmrbench.recipe.schema import Recipe


def _decimals(value: float) -> int:
    text = repr(float(value))
    if "e" in text or "." not in text:
        return 0
    return len(text.split(".")[1].rstrip("0")) or 0


def _half_ulp(value: float) -> float:
    """Half a unit in the last printed place: the most a printed value can be off by."""
    return 0.5 * 10 ** (-max(_decimals(value), 1))


def normalized_values(recipe: Recipe, values: dict) -> dict[str, dict[str, float | None]]:
    """protocol -> {metric: value}, expanding lists aligned with ``recipe.columns``."""
    out: dict[str, dict[str, float | None]] = {}
    for proto, vals in values.items():
        if isinstance(vals, list):
            out[proto] = dict(zip(recipe.columns, vals, strict=True))
        else:
            out[proto] = dict(vals)
    return out


def lint_values(label: str, metrics: dict[str, float | None]) -> list[str]:
    """Problems with one cell's printed numbers, as human-readable strings."""
    return [message for _, message in lint_metric_values(label, metrics)]


def lint_metric_values(label: str, metrics: dict[str, float | None]) -> list[tuple[str, str]]:
    """Problems with one cell's printed numbers as ``(metric, message)``."""
    problems: list[tuple[str, str]] = []
    have = {k: v for k, v in metrics.items() if v is not None}
    for direction in ("i2t", "t2i"):
        ks = [f"{direction}_r{k}" for k in (1, 5, 10)]
        present = [(k, have[k]) for k in ks if k in have]
        for (ka, va), (kb, vb) in zip(present, present[1:]):
            if va > vb:
                problems.append((kb, f"{label}: {ka} = {va} > {kb} = {vb} (recall cannot fall as k grows)"))
    for key, value in have.items():
        spec = K.METRICS.get(key)
        if spec and spec.scale == "percent" and key != K.RSUM and not 0 <= value <= 100:
            problems.append((key, f"{label}: {key} = {value} is outside 0-100"))
        if spec and spec.scale == "fraction" and not 0 <= value <= 1:
            problems.append((key, f"{label}: {key} = {value} is outside 0-1"))
        if spec and spec.scale == "rank" and value < 1:
            problems.append((key, f"{label}: {key} = {value} is below rank 1"))
    if K.RSUM in have and all(k in have for k in K.RECALL_KEYS):
        total = sum(have[k] for k in K.RECALL_KEYS)
        tol = sum(_half_ulp(have[k]) for k in K.RECALL_KEYS) + _half_ulp(have[K.RSUM]) + 1e-9
        if abs(total - have[K.RSUM]) > tol:
            problems.append((
                K.RSUM,
                f"{label}: rsum = {have[K.RSUM]} but the six recalls sum to {total:.2f} "
                f"(off by {abs(total - have[K.RSUM]):.2f}, more than rounding allows)",
            ))
    if K.AVG_MAP in have and K.I2T_MAP in have and K.T2I_MAP in have:
        mean = (have[K.I2T_MAP] + have[K.T2I_MAP]) / 2
        tol = (_half_ulp(have[K.I2T_MAP]) + _half_ulp(have[K.T2I_MAP])) / 2 + _half_ulp(have[K.AVG_MAP]) + 1e-9
        if abs(mean - have[K.AVG_MAP]) > tol:
            problems.append((
                K.AVG_MAP,
                f"{label}: avg_map = {have[K.AVG_MAP]} but the mean of i2t_map and t2i_map is {mean:.4f}",
            ))
    return problems


def lint_recipe(recipe: Recipe) -> list[str]:
    """Warnings about the paper's own numbers, each naming the recipe, table, cell and protocol."""
    return lint_recipe_full(recipe)[0]


def lint_recipe_full(recipe: Recipe) -> tuple[list[str], list[str]]:
    """``(warnings, acknowledged)``: unexpected inconsistencies of the paper's numbers,
    and those a row declares under ``inconsistent`` (with the recipe's explanation)."""
    warnings: list[str] = []
    acknowledged: list[str] = []
    declared = {row.id: row.inconsistent for row in recipe.rows}
    sources = [(row.id, row.paper) for row in recipe.rows] + list(recipe.paper_values.items())
    for cell_id, values in sources:
        expected = declared.get(cell_id, {})
        found: set[str] = set()
        for proto, metrics in normalized_values(recipe, values).items():
            label = f"{recipe.id} ({recipe.table}), cell {cell_id!r}, {proto}"
            for metric, message in lint_metric_values(label, metrics):
                if metric in expected:
                    found.add(metric)
                    acknowledged.append(f"{message} [acknowledged: {expected[metric]}]")
                else:
                    warnings.append(message)
        for metric in sorted(set(expected) - found):
            warnings.append(
                f"{recipe.id} ({recipe.table}), cell {cell_id!r}: 'inconsistent' names {metric} "
                "but its printed numbers are consistent"
            )
    return warnings, acknowledged
