"""Paper-vs-ours reports as one JSON document (docs/json-report.md). Formatting only.

Everything comes from the ``TableReport`` and ``ClaimVerdict`` objects as
collected and judged; numbers keep their full precision. Within one ``version``
fields are only ever added, so a reader that ignores unknown keys keeps working;
renaming, removing or changing the meaning of a field bumps ``version``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.report.collect import CellReport, TableReport
from xmrbench.report.render import COLUMN_NAMES, fmt_value
from xmrbench.stats.claims import ClaimVerdict, PairVerdict
from xmrbench.stats.paired import TestResult, TostResult

SCHEMA = "xmrbench/report"
VERSION = 1


def to_json(reports: list[TableReport]) -> str:
    """The reports as one JSON document (indented, ending in a newline)."""
    return json.dumps(json_document(reports), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def json_document(reports: list[TableReport]) -> dict[str, Any]:
    """``{"schema", "version", "reports"}``: plain data, with None where a number is missing or not finite."""
    return {"schema": SCHEMA, "version": VERSION, "reports": [_finite(report_json(r)) for r in reports]}


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def report_json(rep: TableReport) -> dict[str, Any]:
    """One recipe's report: what it is, where its numbers come from, every cell, every claim."""
    r, p = rep.recipe, rep.paper
    return {
        "recipe": r.id,
        "kind": r.kind,
        "title": r.title,
        "table": r.table,
        "paper": {"id": p.key, "short": p.short, "title": p.title, "authors": p.authors, "venue": p.venue,
                  "year": p.year},
        "profile": rep.resolved.profile,
        "seeds": list(rep.seeds),
        "n_results": rep.n_results,
        "datasets": list(rep.datasets),
        "machines": list(rep.machines),
        "commits": list(rep.commits),
        "allow_unconverged": rep.allow_unconverged,
        "columns": [_column(c) for c in rep.metric_columns()],
        "protocols": [_protocol(rep, proto) for proto in r.protocols],
        "cells": [_cell(rep, cell) for cell in rep.cells],
        "claims": [_claim(cv) for cv in rep.claims],
        "warnings": list(rep.resolved.warnings),
        "acknowledged": list(rep.resolved.acknowledged),
        "notes": {
            "rows": [{"id": row.id, "label": row.label, "note": row.note} for row in r.rows if row.note],
            "recipe": list(r.notes),
        },
        "problems": list(rep.problems),
    }


def _column(metric: str) -> dict[str, Any]:
    spec = K.METRICS[metric]
    digits = len(fmt_value(metric, 0.0).partition(".")[2])
    return {"key": metric, "label": COLUMN_NAMES.get(metric, metric), "scale": spec.scale, "digits": digits}


def _protocol(rep: TableReport, protocol: str) -> dict[str, Any]:
    pp = rep.recipe.protocols[protocol]
    has_ours = any(c.ours.get(protocol) for c in rep.cells)
    notes = rep.comparability_notes(protocol)
    return {
        "id": protocol,
        "description": PROTOCOLS[protocol].description,
        "paper": pp.model_dump(),
        "comparable": rep.comparable_any(protocol) if has_ours else None,
        "differences": [n for n in notes if not n.startswith("(setup)")],
        "setup_differences": [n.removeprefix("(setup) ") for n in notes if n.startswith("(setup)")],
    }


def _cell(rep: TableReport, cell: CellReport) -> dict[str, Any]:
    protocols = {}
    for proto in rep.recipe.protocols:
        paper = cell.paper.get(proto, {})
        ours = cell.ours.get(proto, {})
        comparable, differences, setup = cell.comparable.get(proto, (None, [], []))
        with_proto = [d for d in cell.docs if proto in d.metrics]
        ours_json = {
            metric: {"mean": o.mean, "std": o.std, "n": o.n,
                     "seeds": [d.seed for d in with_proto if metric in d.metrics[proto]]}
            for metric, o in ours.items()
        }
        delta = {
            metric: ours[metric].mean - value
            for metric, value in paper.items()
            if comparable and value is not None and metric in ours
        }
        protocols[proto] = {
            "paper": dict(paper),
            "ours": ours_json,
            "delta": delta,
            "comparable": comparable if ours else None,
            "differences": list(differences) if ours else [],
            "setup_differences": list(setup) if ours else [],
        }
    return {
        "id": cell.id,
        "label": cell.label,
        "source": cell.source,
        "runnable": cell.runnable,
        "pending": cell.pending,
        "seeds": list(cell.seeds),
        "config_differs": cell.config_differs,
        "unconverged": cell.unconverged,
        "protocols": protocols,
    }


def _claim(cv: ClaimVerdict) -> dict[str, Any]:
    return {
        "id": cv.id,
        "text": cv.text,
        "metric": cv.metric,
        "protocol": cv.protocol,
        "kind": cv.kind,
        "margin": cv.margin,
        "verdict": cv.verdict,
        "label": cv.label,
        "pairs": [_pair(pv) for pv in cv.pairs],
    }


def _pair(pv: PairVerdict) -> dict[str, Any]:
    return {
        "better": pv.better,
        "worse": pv.worse,
        "verdict": pv.verdict,
        "seeds": list(pv.seeds),
        "deterministic": pv.deterministic,
        "p_holm": pv.p_adjusted,
        "min_effect": pv.min_effect,
        "margin": pv.margin,
        "reason": pv.reason,
        "seed_test": _test(pv.seed_test),
        "query_test": _test(pv.query_test, two_sided=True),
        "tost": _tost(pv.tost),
        "diff_sd": pv.diff_sd,
        "seeds_for_power": pv.seeds_for_power,
        "plan_level": pv.plan_level,
        "evidence": pv.evidence,
    }


def _test(tr: TestResult | None, *, two_sided: bool = False) -> dict[str, Any] | None:
    if tr is None:
        return None
    out: dict[str, Any] = {"test": tr.test, "n": tr.n, "mean_diff": tr.mean_diff, "p_greater": tr.p_greater,
                           "p_less": tr.p_less}
    if two_sided:  # as the evidence line prints it
        out["p_two_sided"] = (None if tr.p_greater is None or tr.p_less is None
                              else min(1.0, 2 * min(tr.p_greater, tr.p_less)))
    return out


def _tost(tt: TostResult | None) -> dict[str, Any] | None:
    if tt is None:
        return None
    return {"n": tt.n, "mean_diff": tt.mean_diff, "margin": tt.margin, "exact": tt.exact,
            "p_lower": tt.p_lower, "p_upper": tt.p_upper, "p_above": tt.p_above, "p_below": tt.p_below,
            "p_tost": tt.p_tost, "p_outside": tt.p_outside}
