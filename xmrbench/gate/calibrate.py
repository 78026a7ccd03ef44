"""Calibrating a profile by measurement: train each row once with a generous epoch budget
and early stopping at its plateau, and report where its dev curve flattened.

``xmrbench calibrate RECIPE`` runs the profile's cells (one seed) with
``train.epochs = max_epochs`` and ``train.early_stop = true`` and tabulates, per row:
the epoch at which the plateau criterion (core/convergence.py) was met, the seconds
it took, the plateau's dev and test rsum, and the chance rsum of the test split (for a
label-retrieval recipe the mean mAP and its chance level, as the label task records it). A
row that reached its plateau within the budget gets a suggested epoch budget for the
profile (the plateau epoch with a margin, early stopping kept on); one that did not,
or took longer than ``budget_s``, is flagged: shrink its world or its dimensions
before cutting epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xmrbench.config import PLATEAU_DEFAULTS
from xmrbench.core.convergence import CLOSED_FORM
from xmrbench.errors import StoreError
from xmrbench.gate.chance import chance_rsum
from xmrbench.recipe.resolve import Cell, ResolvedRecipe
from xmrbench.store.store import ResultStore

#: a suggested budget is the plateau epoch times this, rounded up (seeds differ)
MARGIN = 1.5


def calibration_overrides(max_epochs: int) -> dict[str, Any]:
    """The overrides a calibration run takes: a generous budget, stopped at the plateau."""
    return {"train.epochs": max_epochs, "train.early_stop": True}


def calibrated_cells(resolved: ResolvedRecipe) -> list[Cell]:
    """The cells a calibration trains: every runnable cell that is not an ensemble."""
    return [c for c in resolved.runnable_cells() if not c.members]


@dataclass
class CalibrationRow:
    recipe: str
    cell: str
    model: str
    converged: bool
    epochs: int | None  # epochs trained (the plateau epoch when converged)
    seconds: float  # training and evaluation, one CPU process
    dev_rsum: float | None  # of the selected epoch
    test_rsum: float | None
    chance_rsum: float | None  # of the test split
    reason: str
    window: int = PLATEAU_DEFAULTS[0]
    criterion: str | None = None  # the record's (Convergence.criterion)
    # the headline metric of the three scores above: rsum, or the mean label mAP (avg_map)
    # of a label-retrieval recipe (ACMR's), whose chance level the label task records
    metric: str = "rsum"

    def suggested_epochs(self) -> int | None:
        """The profile's epoch budget: the plateau epoch with a margin (None: no plateau)."""
        if not self.converged or self.epochs is None:
            return None
        return max(self.window + 1, math.ceil(self.epochs * MARGIN))


def calibration_rows(resolved: ResolvedRecipe, store: ResultStore, seed: int) -> list[CalibrationRow]:
    """One row per calibrated cell whose run is stored (seed ``seed``)."""
    out = []
    for cell in calibrated_cells(resolved):
        try:
            doc = store.read(store.result_path(resolved.id, cell.id, cell.hash, seed))
        except StoreError:
            continue
        record = doc.convergence_record()
        proto = next((p for p in doc.metrics if p != "dev" and "rsum" in doc.metrics[p]), None)
        metric = "rsum"
        if proto is None:  # label retrieval: the mean mAP, with the chance level its run recorded
            proto = next((p for p in doc.metrics if p != "dev" and "avg_map" in doc.metrics[p]), None)
            metric = "avg_map"
        chance = None
        if proto is not None and metric == "avg_map":
            chance = doc.metrics[proto].get("avg_map_chance")
        elif proto is not None:
            fp = doc.protocols.get(proto, {})
            n_images, cpi, folds = fp.get("images"), fp.get("captions_per_image") or 5, fp.get("folds") or 1
            if n_images:  # a fold-averaged protocol ranks within each fold
                chance = chance_rsum(int(n_images) // int(folds), int(cpi))
        out.append(CalibrationRow(
            recipe=resolved.id,
            cell=cell.id,
            model=doc.config.get("model", {}).get("name", "?"),
            converged=bool(record and record.converged),
            epochs=record.epochs if record is not None else None,
            seconds=float(doc.timing.get("wall_s", 0.0)),
            dev_rsum=doc.metrics.get("dev", {}).get(metric),
            test_rsum=doc.metrics[proto][metric] if proto else None,
            chance_rsum=chance,
            reason=record.reason if record is not None else "no convergence record",
            window=(record.window if record is not None and record.window else PLATEAU_DEFAULTS[0]),
            criterion=record.criterion if record is not None else None,
            metric=metric,
        ))
    return out


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def to_markdown(rows: list[CalibrationRow], *, budget_s: float, max_epochs: int) -> str:
    """The calibration table (docs/calibration.md's format)."""
    metrics = {r.metric for r in rows}
    name = metrics.pop() if len(metrics) == 1 else "score"  # rsum, avg_map, or a mix of both
    head = (f"| recipe | row | model | epochs to plateau | seconds | dev {name} | test {name} | chance {name} "
            "| suggested epochs | note |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        note = "" if r.converged else f"no plateau within {max_epochs} epochs"
        if r.seconds > budget_s:
            note = "; ".join(filter(None, [note, f"over the {budget_s:.0f} s budget: shrink the world or the dimensions"]))
        suggested = r.suggested_epochs()
        epochs = r.epochs if r.converged and r.epochs is not None else "-"
        d = 1 if r.metric == "rsum" else 3
        if r.criterion == CLOSED_FORM:
            epochs, note = CLOSED_FORM, "; ".join(filter(None, ["converged by construction", note]))
        lines.append(
            f"| {r.recipe} | {r.cell} | {r.model} | {epochs} | {r.seconds:.0f} "
            f"| {_num(r.dev_rsum, d)} | {_num(r.test_rsum, d)} | {_num(r.chance_rsum, d)} "
            f"| {suggested if suggested is not None else '-'} | {note} |"
        )
    return "\n".join(lines) + "\n"
