"""Rendering paper-vs-ours tables as Markdown, LaTeX and CSV. Formatting only."""

from __future__ import annotations

import csv
import io

from tabulate import tabulate

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.report.collect import CellReport, Ours, TableReport
from xmrbench.stats.claims import EQUIVALENT, ClaimVerdict

COLUMN_NAMES = {
    K.I2T_R1: "i2t R@1", K.I2T_R5: "i2t R@5", K.I2T_R10: "i2t R@10",
    K.T2I_R1: "t2i R@1", K.T2I_R5: "t2i R@5", K.T2I_R10: "t2i R@10",
    K.I2T_MEDR: "i2t medr", K.T2I_MEDR: "t2i medr", K.I2T_MEANR: "i2t meanr", K.T2I_MEANR: "t2i meanr",
    K.RSUM: "rsum", K.MAP: "mAP", K.I2T_MAP: "Img2Txt mAP", K.T2I_MAP: "Txt2Img mAP", K.AVG_MAP: "Avg mAP",
    K.S2S_R1: "s2s R@1", K.S2S_R5: "s2s R@5", K.S2S_R10: "s2s R@10",
}


def _digits(metric: str) -> int:
    return 3 if K.METRICS[metric].scale == "fraction" else 1


def fmt_value(metric: str, value: float | None) -> str:
    return "-" if value is None else f"{value:.{_digits(metric)}f}"


def fmt_ours(metric: str, ours: Ours | None) -> str:
    if ours is None:
        return ""
    d = _digits(metric)
    return f"{ours.mean:.{d}f} ± {ours.std:.{d}f}" if ours.n > 1 else f"{ours.mean:.{d}f}"


def fmt_delta(metric: str, paper: float | None, ours: Ours | None) -> str:
    if paper is None or ours is None:
        return ""
    return f"{ours.mean - paper:+.{_digits(metric)}f}"


def _ours_label(cell: CellReport) -> str:
    if not cell.seeds:
        return "ours: no results yet"
    tag = f"ours (n={len(cell.seeds)})"
    tag += " †" if cell.config_differs else ""
    return tag + " ‡" if cell.unconverged else tag


def table_rows(rep: TableReport, protocol: str) -> tuple[list[str], list[list[str]]]:
    cols = rep.metric_columns()
    header = ["method", ""] + [COLUMN_NAMES.get(c, c) for c in cols]
    rows: list[list[str]] = []
    for cell in rep.cells:
        paper = cell.paper.get(protocol, {})
        ours = cell.ours.get(protocol, {})
        label = cell.label + (f" [{cell.source}]" if cell.source else "")
        if not cell.runnable:
            if paper:
                rows.append([label, "paper (not run)"] + [fmt_value(c, paper.get(c)) for c in cols])
            continue
        if not cell.evaluates(protocol):
            if paper:
                rows.append([label, "paper (not evaluated on this protocol)"]
                            + [fmt_value(c, paper.get(c)) for c in cols])
            continue
        if paper:
            rows.append([label, "paper"] + [fmt_value(c, paper.get(c)) for c in cols])
            label = ""
        rows.append([label, _ours_label(cell)] + [fmt_ours(c, ours.get(c)) for c in cols])
        comparable = cell.comparable.get(protocol, (False, [], []))[0]
        if paper and ours and comparable:
            rows.append(["", "Δ"] + [fmt_delta(c, paper.get(c), ours.get(c)) for c in cols])
    return header, rows


def header_lines(rep: TableReport) -> list[str]:
    r, p = rep.recipe, rep.paper
    lines = [
        f"{p.short} ({p.venue} {p.year}), {r.table}: {r.title}  [recipe `{r.id}`]",
        f"profile: {rep.resolved.profile}; seeds: {', '.join(map(str, rep.seeds)) or 'none'}; "
        f"results: {rep.n_results}",
        f"ours measured on: {'; '.join(rep.datasets) or 'no results yet'}",
        f"machine: {'; '.join(rep.machines) or '-'}; code: {', '.join(rep.commits) or '-'}",
    ]
    return lines


def protocol_lines(rep: TableReport, protocol: str) -> list[str]:
    pp = rep.recipe.protocols[protocol]
    desc = f"paper: {pp.dataset}, {pp.split} split" + (f", {pp.images} images" if pp.images else "")
    desc += f", {pp.captions_per_image} captions/image" + (f", mean of {pp.folds} folds" if pp.folds > 1 else "")
    lines = [f"protocol `{protocol}` ({PROTOCOLS[protocol].description}); {desc}"]
    if pp.features:
        lines.append(f"paper features: {pp.features}" + (f"; text: {pp.text_features}" if pp.text_features else ""))
    has_ours = any(c.ours.get(protocol) for c in rep.cells)
    if has_ours and not rep.comparable_any(protocol):
        lines.append(
            "NOT COMPARABLE: our numbers and the paper's were measured on different protocols ("
            + "; ".join(n for n in rep.comparability_notes(protocol) if not n.startswith("(setup)"))
            + "). They are shown side by side for orientation only; no Δ is computed."
        )
    elif has_ours:
        caveats = [n for n in rep.comparability_notes(protocol) if n.startswith("(setup)")]
        if caveats:
            lines.append("comparable protocol; setup differs: " + "; ".join(c.removeprefix("(setup) ") for c in caveats))
    pending = sorted({c.pending for c in rep.cells if not c.runnable and c.pending})
    if pending:
        lines.append("paper (not run): rows printed by the paper that xmrbench does not run: " + "; ".join(pending))
    if any(c.config_differs for c in rep.cells):
        lines.append("† results whose config differs from the recipe as now resolved (--set overrides or an edited recipe)")
    behind = [c for c in rep.cells if c.unconverged and c.ours.get(protocol)]
    if behind:
        lines.append("‡ not converged (the best dev score still rose by the train.plateau_gain threshold or more over "
                     "the last train.plateau_window epochs): " + "; ".join(f"{c.label}: {c.unconverged}" for c in behind))
    return lines


def claim_rows(rep: TableReport) -> tuple[list[str], list[list[str]]]:
    header = ["claim", "metric", "verdict", "evidence"]
    rows = [[cv.text, _claim_metric(cv), cv.label, "; ".join(pv.evidence for pv in cv.pairs)] for cv in rep.claims]
    return header, rows


def _claim_metric(cv: ClaimVerdict) -> str:
    """The metric column of a claim; an equivalence claim adds its margin."""
    text = f"{cv.metric} ({cv.protocol})"
    if cv.kind == EQUIVALENT:
        text += f", equivalent within ±{cv.margin:g}"
    return text


TEST_NOTE = (
    "Verdicts: per pair, a paired t-test over seeds (an exact sign-flip test over seeds where the difference is "
    "equal across seeds), two-sided, Holm-corrected over the table's tested pairs, alpha 0.05; a pair whose cells "
    "are equal across seeds (deterministic) has no p-value and holds only when its gap exceeds the minimum effect "
    "(one query's worth); a claim is contradicted if any pair is, else untested if any pair is, and holds only if "
    "every pair holds. 'query p' is a sign-flip randomization test over test queries pooled over seeds "
    "(test-set noise only). A pair with a side whose training has not converged is untested. An equivalence "
    "claim (A matches B within a margin m) is judged per pair by two one-sided paired t-tests over seeds (TOST, "
    "H0: mean difference <= -m, H0: mean difference >= +m; p_tost the larger p): it holds when p_tost, "
    "Holm-corrected with the table's other tested pairs, is below alpha, and is contradicted when the mean "
    "difference lies significantly outside the margin (two-sided, Holm-corrected); a difference equal across "
    "seeds holds when |Δ| < m and is contradicted when |Δ| > m."
)


UNCONVERGED_INCLUDED = (
    "--allow-unconverged: these verdicts include runs that have not converged; they may compare training "
    "schedules rather than methods."
)


def to_markdown(rep: TableReport) -> str:
    out = [f"## {rep.recipe.id}", ""]
    out += [f"- {line}" for line in header_lines(rep)]
    for proto in rep.recipe.protocols:
        out += ["", f"### {proto}", ""]
        out += [f"> {line}" for line in protocol_lines(rep, proto)]
        header, rows = table_rows(rep, proto)
        out += ["", tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)]
    if rep.claims:
        out += ["", "### claims", ""]
        header, rows = claim_rows(rep)
        out += [tabulate(rows, headers=header, tablefmt="github", disable_numparse=True), "", TEST_NOTE]
        out += ["", UNCONVERGED_INCLUDED] if rep.allow_unconverged else []
    if rep.resolved.warnings:
        out += ["", "### lint of the paper's printed numbers", ""]
        out += [f"- {w}" for w in rep.resolved.warnings]
    if rep.resolved.acknowledged:
        out += ["", "### known inconsistencies of the paper's printed numbers", ""]
        out += [f"- {w}" for w in rep.resolved.acknowledged]
    row_notes = [f"{row.label}: {row.note}" for row in rep.recipe.rows if row.note]
    if rep.recipe.notes or row_notes:
        out += ["", "### notes", ""] + [f"- {n}" for n in [*row_notes, *rep.recipe.notes]]
    if rep.problems:
        out += ["", "### store problems", ""] + [f"- {p}" for p in rep.problems]
    return "\n".join(out) + "\n"


def to_latex(rep: TableReport) -> str:
    out = [f"% {line}" for line in header_lines(rep)]
    for proto in rep.recipe.protocols:
        out += [f"% {line}" for line in protocol_lines(rep, proto)]
        header, rows = table_rows(rep, proto)
        out.append(tabulate(rows, headers=header, tablefmt="latex_booktabs", disable_numparse=True))
    if rep.claims:
        header, rows = claim_rows(rep)
        out.append(tabulate(rows, headers=header, tablefmt="latex_booktabs", disable_numparse=True))
        out.append(f"% {TEST_NOTE}")
    return "\n".join(out) + "\n"


CSV_FIELDS = [
    "recipe", "table", "profile", "protocol", "cell", "label", "metric", "paper",
    "ours_mean", "ours_std", "n_seeds", "delta", "comparable", "dataset",
]


def csv_records(rep: TableReport) -> list[dict[str, object]]:
    records = []
    for proto in rep.recipe.protocols:
        for cell in rep.cells:
            paper = cell.paper.get(proto, {})
            ours = cell.ours.get(proto, {})
            comparable = cell.comparable.get(proto, (False, [], []))[0]
            for metric in rep.metric_columns():
                p, o = paper.get(metric), ours.get(metric)
                if p is None and o is None:
                    continue
                records.append({
                    "recipe": rep.recipe.id, "table": rep.recipe.table, "profile": rep.resolved.profile,
                    "protocol": proto, "cell": cell.id, "label": cell.label, "metric": metric,
                    "paper": p, "ours_mean": o.mean if o else None, "ours_std": o.std if o else None,
                    "n_seeds": o.n if o else 0,
                    "delta": (o.mean - p) if (o is not None and p is not None and comparable) else None,
                    "comparable": comparable if o else None,
                    "dataset": "; ".join(rep.datasets),
                })
    return records


def to_csv(reports: list[TableReport]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rep in reports:
        writer.writerows(csv_records(rep))
    return buf.getvalue()
