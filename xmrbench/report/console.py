"""Paper-vs-ours tables for a terminal, fitted to its width. Formatting only.

Rows are named by their row ids (the paper's labels follow in a legend, or take
the ids' place with ``labels=True``); nothing that names a row is ever cut
short. A table wider than the terminal first moves each standard deviation to a
line of its own and splits two-word column headers over two lines; if it is
still too wide, its metric columns are split over several blocks, each of which
repeats the row names. Claims get one line each: the full evidence is in the
Markdown and JSON outputs.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from xmrbench.core.metrics import keys as K
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.report.collect import CellReport, TableReport
from xmrbench.report.render import COLUMN_NAMES, UNCONVERGED_INCLUDED, fmt_delta, fmt_value
from xmrbench.stats.claims import EQUIVALENT, ClaimVerdict, PairVerdict
from xmrbench.stats.paired import PLAN_MAX_SEEDS

GAP = 2  # spaces between two columns
MIN_WIDTH = 40  # narrower terminals get this width (lines may then run past the edge)
LEGEND_MIN = 30  # the narrowest a legend's label column may be beside the ids
PAPER, OURS, SD, DELTA = "paper", "ours", "± sd", "Δ"


@dataclass
class _Line:
    """One line of a row: its kind (paper, ours, ...) and a value per metric column, or free text."""

    kind: str
    values: list[str] | None = None
    text: str | None = None


@dataclass
class _Group:
    """The lines of one table row, and its name (the row id, or its label wrapped)."""

    name: list[str]
    lines: list[_Line]


def to_console(reports: list[TableReport], *, width: int = 80, labels: bool = False) -> str:
    """Every report fitted to ``width`` columns; ``labels``: the paper's row labels instead of row ids."""
    return "\n\n".join("\n".join(report_lines(rep, width=width, labels=labels)) for rep in reports) + "\n"


def report_lines(rep: TableReport, *, width: int = 80, labels: bool = False) -> list[str]:
    """One report as lines of at most ``width`` characters (longer only where a row id is)."""
    width = max(width, MIN_WIDTH)
    out = _head(rep, width)
    for proto in rep.recipe.protocols:
        out += ["", _rule(f"protocol {proto}", width)]
        out += _protocol(rep, proto, width, labels)
        out += [""] + _table(rep, proto, width, labels)
    if not labels:
        out += ["", _rule("rows", width)] + _legend(rep, width)
    if rep.claims:
        out += ["", _rule("claims", width)] + _claims(rep, width)
    sections = [
        ("lint of the paper's printed numbers", list(rep.resolved.warnings)),
        ("known inconsistencies of the paper's printed numbers", list(rep.resolved.acknowledged)),
        ("notes", [f"{row.label if labels else row.id}: {row.note}" for row in rep.recipe.rows if row.note]
         + list(rep.recipe.notes)),
        ("store problems", list(rep.problems)),
    ]
    for title, items in sections:
        if items:
            out += ["", _rule(title, width)] + [line for item in items for line in _bullet(item, width)]
    return out


# ---------------------------------------------------------------------------
# text helpers


def _wrap(text: str, width: int) -> list[str]:
    """``text`` over lines of at most ``width`` characters, never breaking at a hyphen (row ids have them)."""
    return textwrap.wrap(text, max(width, 1), break_on_hyphens=False) or [""]


def _rule(title: str, width: int) -> str:
    head = f"── {title} "
    return head + "─" * max(width - len(head), 3)


def _bullet(text: str, width: int) -> list[str]:
    return [("- " if i == 0 else "  ") + line for i, line in enumerate(_wrap(text, width - 2))]


def _labelled(items: list[tuple[str, str]], width: int) -> list[str]:
    """``label: text`` lines, the texts aligned and wrapped under themselves; an empty
    label continues the item above."""
    indent = max(len(label) for label, _ in items) + 2
    out = []
    for label, text in items:
        head = f"{label}:" if label else ""
        for i, line in enumerate(_wrap(text, width - indent)):
            out.append(f"{head if i == 0 else '':<{indent}}{line}".rstrip())
    return out


# ---------------------------------------------------------------------------
# report head and protocol


def _head(rep: TableReport, width: int) -> list[str]:
    r, p = rep.recipe, rep.paper
    seeds = ", ".join(map(str, rep.seeds)) or "none"
    return _wrap(f"{r.id} · {p.short} ({p.venue} {p.year}), {r.table}", width) + _labelled([
        ("title", r.title),
        ("profile", f"{rep.resolved.profile}; seeds {seeds}; {rep.n_results} result(s)"),
        ("machine", "; ".join(rep.machines) or "-"),
        ("code", ", ".join(rep.commits) or "-"),
    ], width)


def _name(cell: CellReport, labels: bool) -> str:
    return cell.label if labels else cell.id


def _protocol(rep: TableReport, protocol: str, width: int, labels: bool) -> list[str]:
    pp = rep.recipe.protocols[protocol]
    paper = f"{pp.dataset}, {pp.split} split" + (f", {pp.images} images" if pp.images else "")
    paper += f", {pp.captions_per_image} captions/image" + (f", mean of {pp.folds} folds" if pp.folds > 1 else "")
    items = [("protocol", f"{protocol}: {PROTOCOLS[protocol].description}"), ("paper", paper)]
    if pp.features:
        items.append(("features", pp.features))
    if pp.text_features:
        items.append(("text", pp.text_features))
    has_ours = any(c.ours.get(protocol) for c in rep.cells)
    items.append(("ours", "; ".join(rep.datasets) if has_ours else "no results yet"))
    notes = rep.comparability_notes(protocol)
    breaks = [n for n in notes if not n.startswith("(setup)")]
    caveats = [n.removeprefix("(setup) ") for n in notes if n.startswith("(setup)")]
    if not has_ours:
        items.append(("comparable", "-"))
    elif not rep.comparable_any(protocol):
        items.append(("comparable", f"no ({'; '.join(breaks)}): side by side for orientation only, no Δ"))
    else:
        items.append(("comparable", "yes" + (f"; setup differs: {'; '.join(caveats)}" if caveats else "")))
    pending: dict[str, list[str]] = {}
    for c in rep.cells:
        if not c.runnable and c.pending:
            pending.setdefault(c.pending, []).append(_name(c, labels))
    for i, (why, names) in enumerate(pending.items()):
        items.append(("not run" if i == 0 else "", f"{', '.join(names)}: {why}"))
    if any(c.config_differs for c in rep.cells):
        items.append(("†", "results whose config differs from the recipe as now resolved (--set overrides or "
                           "an edited recipe)"))
    behind = [c for c in rep.cells if c.unconverged and c.ours.get(protocol)]
    if behind:
        items.append(("‡", "not converged (the best dev score still rose by the train.plateau_gain threshold or "
                           "more over the last train.plateau_window epochs)"))
        items += [("", f"{_name(c, labels)}: {c.unconverged}") for c in behind]
    return _labelled(items, width)


# ---------------------------------------------------------------------------
# the table


def _ours_kind(rep: TableReport, cell: CellReport) -> str:
    """``ours``, with the number of seeds where it differs from the table's, and the † and ‡ marks."""
    parts = [OURS]
    if cell.seeds and len(cell.seeds) != len(rep.seeds):
        parts.append(f"n={len(cell.seeds)}")
    marks = ("†" if cell.config_differs else "") + ("‡" if cell.unconverged else "")
    return " ".join(parts + ([marks] if marks else []))


def _groups(rep: TableReport, protocol: str, cols: list[str], *, sd_line: bool, labels: bool,
            name_width: int) -> list[_Group]:
    groups = []
    for cell in rep.cells:
        paper = cell.paper.get(protocol, {})
        ours = cell.ours.get(protocol, {})
        lines = [_Line(PAPER, [fmt_value(c, paper.get(c)) for c in cols])] if paper else []
        if not cell.runnable:
            if not paper:
                continue
            lines.append(_Line(OURS, text="not run"))
        elif not cell.evaluates(protocol):
            if not paper:
                continue
            lines.append(_Line(OURS, text="not evaluated on this protocol"))
        elif not ours:
            lines.append(_Line(_ours_kind(rep, cell), text="no results yet" if not cell.seeds
                               else "no results on this protocol"))
        else:
            spread = any(o.n > 1 for o in ours.values())
            means = []
            for c in cols:
                o = ours.get(c)
                if o is None:
                    means.append("-")
                elif o.n > 1 and not sd_line:
                    means.append(f"{fmt_value(c, o.mean)}±{fmt_value(c, o.std)}")
                else:
                    means.append(fmt_value(c, o.mean))
            lines.append(_Line(_ours_kind(rep, cell), means))
            if sd_line and spread:
                lines.append(_Line(SD, [fmt_value(c, ours[c].std) if c in ours and ours[c].n > 1 else ""
                                        for c in cols]))
            if paper and cell.comparable.get(protocol, (False, [], []))[0]:
                lines.append(_Line(DELTA, [fmt_delta(c, paper.get(c), ours.get(c)) for c in cols]))
        if labels:
            label = cell.label + (f" [{cell.source}]" if cell.source else "")
            name = _wrap(label, name_width)
        else:
            name = [cell.id]
        groups.append(_Group(name, lines))
    return groups


def _headers(cols: list[str], two_lines: bool) -> list[tuple[str, str]]:
    """(top, bottom) header of each column: a two-word name goes over two lines if asked."""
    out = []
    for c in cols:
        name = COLUMN_NAMES.get(c, c)
        top, _, bottom = name.partition(" ") if two_lines and " " in name else ("", "", name)
        out.append((top, bottom))
    return out


def _widths(groups: list[_Group], headers: list[tuple[str, str]]) -> list[int]:
    return [
        max([len(top), len(bottom)] + [len(line.values[j]) for g in groups for line in g.lines if line.values])
        for j, (top, bottom) in enumerate(headers)
    ]


def _blocks(widths: list[int], room: int) -> list[list[int]]:
    """Column indices split into blocks that each fit ``room`` characters (at least one column a block)."""
    blocks: list[list[int]] = [[]]
    used = 0
    for j, w in enumerate(widths):
        if blocks[-1] and used + GAP + w > room:
            blocks.append([])
            used = 0
        blocks[-1].append(j)
        used += GAP + w
    return blocks


def _table(rep: TableReport, protocol: str, width: int, labels: bool) -> list[str]:
    cols = rep.metric_columns()
    head = "row (label)" if labels else "row"
    if labels:
        longest = max((len(c.label) + (len(c.source) + 3 if c.source else 0) for c in rep.cells), default=0)
        name_width = max(len(head), min(longest, max(16, width // 3)))
    else:
        name_width = max([len(head)] + [len(c.id) for c in rep.cells])
    layouts = [(False, False), (False, True), (True, False), (True, True)]
    for sd_line, two_lines in layouts:
        groups = _groups(rep, protocol, cols, sd_line=sd_line, labels=labels, name_width=name_width)
        headers = _headers(cols, two_lines)
        widths = _widths(groups, headers)
        name_w = max([len(head)] + [len(s) for g in groups for s in g.name])
        kind_w = max([0] + [len(line.kind) for g in groups for line in g.lines])
        blocks = _blocks(widths, width - name_w - GAP - kind_w)
        if len(blocks) == 1:
            break
    if not groups:
        return ["(no rows)"]
    out: list[str] = []
    for b, block in enumerate(blocks):
        if b:
            out.append("")
        out += _block(groups, headers, widths, block, name_w, kind_w, head, width)
    return out


def _block(groups: list[_Group], headers: list[tuple[str, str]], widths: list[int], block: list[int],
           name_w: int, kind_w: int, head: str, width: int) -> list[str]:
    def row(name: str, kind: str, cells: list[str], text: str = "") -> str:
        line = f"{name:<{name_w}}{' ' * GAP}{kind:<{kind_w}}"
        line += "".join(" " * GAP + f"{v:>{widths[j]}}" for j, v in zip(block, cells))
        return (line + (" " * GAP + text if text else "")).rstrip()

    area = sum(GAP + widths[j] for j in block) - GAP
    out = []
    if any(headers[j][0] for j in block):
        out.append(row("", "", [headers[j][0] for j in block]))
    out.append(row(head, "", [headers[j][1] for j in block]))
    out.append("─" * (name_w + GAP + kind_w + area + GAP))
    spaced = any(len(g.name) > 1 for g in groups)  # wrapped labels: a blank line keeps rows apart
    for n, g in enumerate(groups):
        if spaced and n:
            out.append("")
        physical: list[tuple[str, list[str] | None, str | None]] = []
        for line in g.lines:
            if line.values is not None:
                values = [line.values[j] for j in block]
                if line.kind == PAPER or any(values):  # a Δ or sd line with nothing in this block is left out
                    physical.append((line.kind, values, None))
            else:
                for i, part in enumerate(_wrap(line.text or "", max(width - name_w - kind_w - 2 * GAP, area))):
                    physical.append((line.kind if i == 0 else "", None, part))
        for i in range(max(len(g.name), len(physical))):
            name = g.name[i] if i < len(g.name) else ""
            kind, values, text = physical[i] if i < len(physical) else ("", None, None)
            if values is not None:
                out.append(row(name, kind, values))
            else:
                out.append(row(name, kind, [], text or ""))
    return out


def _legend(rep: TableReport, width: int) -> list[str]:
    """Each row id with the paper's label (and where its numbers come from)."""
    items = []
    for cell in rep.cells:
        label = cell.label + (f" [{cell.source}]" if cell.source else "")
        if not cell.runnable:
            label += " (not run)"
        items.append((cell.id, label))
    id_w = max(len(i) for i, _ in items) if items else 0
    out = []
    if width - id_w - GAP < LEGEND_MIN:  # long ids: each label on lines of its own, under its id
        for cid, label in items:
            out += [cid] + ["    " + line for line in _wrap(label, width - 4)]
        return out
    for cid, label in items:
        for i, line in enumerate(_wrap(label, width - id_w - GAP)):
            out.append(f"{cid if i == 0 else '':<{id_w}}{' ' * GAP}{line}".rstrip())
    return out


# ---------------------------------------------------------------------------
# claims


def _deciding_pair(cv: ClaimVerdict) -> PairVerdict | None:
    """The pair behind a claim's verdict: of the pairs with the claim's verdict, the one
    with the largest corrected p (the closest call); None for a claim without pairs."""
    same = [pv for pv in cv.pairs if pv.verdict == cv.verdict] or list(cv.pairs)
    if not same:
        return None
    return max(same, key=lambda pv: -1.0 if pv.p_adjusted is None else pv.p_adjusted)


def _pair_effect(pv: PairVerdict) -> float | None:
    """A pair's mean difference over seeds (better - worse, or a - b for an equivalence pair)."""
    if pv.kind == EQUIVALENT:
        return None if pv.tost is None else pv.tost.mean_diff
    return None if pv.seed_test is None else pv.seed_test.mean_diff


def _pair_count(cv: ClaimVerdict) -> str:
    """A claim's pairs: their number, or ``judged/all`` when some could not be judged."""
    judged = sum(pv.verdict != "untested" for pv in cv.pairs)
    return str(len(cv.pairs)) if judged == len(cv.pairs) else f"{judged}/{len(cv.pairs)}"


def _claim_plan(cv: ClaimVerdict) -> str:
    """The seed plan of a claim left not significant: the most seeds any of its not
    significant pairs needs (the claim holds only when every pair does); '-' otherwise."""
    if cv.verdict != "not significant":
        return "-"
    planned = [pv for pv in cv.pairs if pv.verdict == "not significant" and pv.plan_level is not None]
    if not planned:
        return "-"
    if any(pv.seeds_for_power is None for pv in planned):
        return f">{PLAN_MAX_SEEDS}"
    return str(max(pv.seeds_for_power for pv in planned))  # type: ignore[type-var]


def _claims(rep: TableReport, width: int) -> list[str]:
    several = len(rep.recipe.protocols) > 1
    rows = []
    for cv in rep.claims:
        pv = _deciding_pair(cv)
        effect = None if pv is None else _pair_effect(pv)
        p = None if pv is None else pv.p_adjusted
        metric = cv.metric + (f" ({cv.protocol})" if several else "")
        if cv.kind == EQUIVALENT:
            metric += f" within ±{cv.margin:g}"
        digits = (3 if K.METRICS[cv.metric].scale == "fraction" else 1) + 1 if cv.metric in K.METRICS else 3
        rows.append([cv.id, cv.label, "-" if effect is None else f"{effect:+.{digits}f}",
                     "-" if p is None else f"{p:.3g}", _pair_count(cv), _claim_plan(cv), metric])
    header = ["claim", "verdict", "Δ", "p", "pairs", "seeds", "metric"]
    right = {2, 3, 4, 5}
    for ncols in (7, 6, 5):
        table = [header[:ncols]] + [r[:ncols] for r in rows]
        widths = [max(len(r[j]) for r in table) for j in range(ncols)]
        if sum(widths) + GAP * (ncols - 1) <= width:
            out = []
            for r in table:
                cells = [f"{v:>{widths[j]}}" if j in right else f"{v:<{widths[j]}}" for j, v in enumerate(r)]
                out.append((" " * GAP).join(cells).rstrip())
            break
    else:
        out = []
        for r in rows:
            plan = "" if r[5] == "-" else f"; {r[5]} seeds for 80% power"
            text = f"{r[0]}: {r[1]}; Δ {r[2]}; p {r[3]}; {r[4]} pair(s){plan}; {r[6]}"
            out += [("" if i == 0 else "    ") + line for i, line in enumerate(_wrap(text, width - 4))]
    note = ("Δ, p: the mean difference over seeds and the Holm-corrected p of the pair that decides each "
            "verdict (of the claim's pairs with its verdict, the one with the largest p; '-': none, e.g. a pair "
            "equal across seeds). seeds: for a claim left not significant, the seeds its pairs would need to "
            "decide with 80% power, were the measured differences and spreads the true ones (the seed plan, "
            "README). Every pair's evidence: --markdown or --json.")
    if any("/" in r[4] for r in rows):
        note += (" pairs j/n: only j of the claim's n pairs could be judged (the others have no results yet "
                 "or have not converged); the claim stays untested until every pair is judged.")
    out += [""] + _wrap(note, width)
    if rep.allow_unconverged:
        out += [""] + _wrap(UNCONVERGED_INCLUDED, width)
    return out
