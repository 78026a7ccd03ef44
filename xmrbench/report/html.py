"""Paper-vs-ours reports as one self-contained HTML page. Formatting only.

The page holds the same lines and numbers as :func:`xmrbench.report.render.to_markdown`
(it is built from the same row and line helpers), the protocol fingerprints side by
side, and the figures embedded as base64 PNG data URIs. Everything it needs is inline:
no scripts, fonts, style sheets or images are fetched, so the file can be mailed,
archived or opened offline, and it prints on paper.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from html import escape

from xmrbench import __version__
from xmrbench.provenance.fingerprint import COMPARABLE, SETUP, paper_fingerprint
from xmrbench.report.collect import TableReport
from xmrbench.report.render import (
    TEST_NOTE,
    UNCONVERGED_INCLUDED,
    claim_rows,
    header_lines,
    protocol_lines,
    table_rows,
)
from xmrbench.store.store import safe_name

#: A figure for the page: (file name, PNG bytes), as :func:`xmrbench.report.plots.figure_pngs` returns.
FigurePng = tuple[str, bytes]

_CSS = """
:root { --ink: #1d1f21; --muted: #5f6368; --rule: #d0d4d9; --band: #f4f6f8; --warn: #b36b00;
  --warn-bg: #fff7e6; --good: #1e7b34; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1.5rem 1.25rem 3rem; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.35rem; margin: 2.5rem 0 .25rem; padding-top: .5rem; border-top: 3px solid var(--ink); }
h3 { font-size: 1.1rem; margin: 1.75rem 0 .5rem; }
p, ul { margin: .4rem 0; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--band);
  padding: 0 .2em; border-radius: 3px; }
.muted { color: var(--muted); }
.paper { margin: 0 0 .75rem; }
ul.facts { list-style: none; padding: 0; margin: .5rem 0 .75rem; }
nav.toc { background: var(--band); padding: .75rem 1rem; border-radius: 4px; margin: 1rem 0; }
nav.toc ol { margin: .25rem 0 0; padding-left: 1.5rem; }
.note { border-left: 4px solid var(--rule); padding: .3rem .75rem; margin: .4rem 0; }
.note.warn { border-color: var(--warn); background: var(--warn-bg); }
.scroll { overflow-x: auto; margin: .75rem 0; }
table { border-collapse: collapse; font-size: .9rem; }
caption { text-align: left; color: var(--muted); padding: .25rem 0; caption-side: top; }
th, td { padding: .25rem .55rem; border-bottom: 1px solid var(--rule); vertical-align: top; }
thead th { border-bottom: 2px solid var(--ink); text-align: left; white-space: nowrap; }
table.numbers td.num, table.numbers th.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
table.numbers td.method { max-width: 24rem; }
table.numbers td.kind { white-space: nowrap; color: var(--muted); }
table.numbers tbody:nth-of-type(even) { background: var(--band); }
table.numbers tbody tr:not(:last-child) td { border-bottom-color: transparent; }
tr.paper td.num { color: var(--muted); }
tr.ours td.num { font-weight: 600; }
tr.delta td { font-style: italic; }
table.claims td.evidence ul { margin: 0; padding-left: 1.1rem; }
table.fingerprint td.differs { color: var(--bad); font-weight: 600; }
.verdict { display: inline-block; padding: 0 .45em; border-radius: 3px; white-space: nowrap;
  border: 1px solid currentColor; }
.verdict.holds { color: var(--good); }
.verdict.contradicted { color: var(--bad); }
.verdict.untested, .verdict.not-significant { color: var(--muted); }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: .85rem; }
footer { margin-top: 3rem; color: var(--muted); font-size: .85rem; border-top: 1px solid var(--rule); }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  h2 { break-before: page; }
  section.recipe:first-of-type h2 { break-before: auto; }
  h2, h3 { break-after: avoid; }
  .scroll { overflow: visible; }
  table, figure, .note { break-inside: avoid; }
  nav.toc { background: none; border: 1px solid var(--rule); }
  a { color: inherit; text-decoration: none; }
}
"""

_CODE = re.compile(r"`([^`]+)`")


def _text(value: object) -> str:
    """Escaped text; markdown ``code`` spans of the report lines become <code>."""
    return _CODE.sub(r"<code>\1</code>", escape(str(value)))


def anchor(recipe_id: str, taken: set[str]) -> str:
    """An HTML id for a recipe's section, unique among ``taken`` (which it joins)."""
    base = "recipe-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", recipe_id).strip("-") or "x")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _numbers_table(rep: TableReport, protocol: str) -> str:
    """The paper | ours | Δ table of one protocol: one row group per cell."""
    header, rows = table_rows(rep, protocol)
    head = "".join(
        f'<th scope="col" class="{"num" if i > 1 else "text"}">{escape(h)}</th>' for i, h in enumerate(header)
    )
    groups: list[list[list[str]]] = []
    for row in rows:
        if row[0] or not groups:
            groups.append([])
        groups[-1].append(row)
    body = []
    for group in groups:
        lines = []
        for row in group:
            kind = "paper" if row[1].startswith("paper") else "delta" if row[1] == "Δ" else "ours"
            cells = [f'<td class="method">{escape(row[0])}</td>', f'<td class="kind">{escape(row[1])}</td>']
            cells += [f'<td class="num">{escape(v)}</td>' for v in row[2:]]
            lines.append(f'<tr class="{kind}">{"".join(cells)}</tr>')
        body.append("<tbody>" + "".join(lines) + "</tbody>")
    caption = f"protocol {escape(protocol)}; ours measured on: {escape('; '.join(rep.datasets) or 'no results yet')}"
    return (
        f'<div class="scroll"><table class="numbers"><caption>{caption}</caption>'
        f"<thead><tr>{head}</tr></thead>{''.join(body)}</table></div>"
    )


def _fingerprint_table(rep: TableReport, protocol: str) -> str:
    """The paper's protocol fingerprint beside the values our results recorded."""
    paper = paper_fingerprint(rep.recipe.protocols[protocol])
    ours_fps = [d.protocols[protocol] for c in rep.cells for d in c.docs if protocol in d.protocols]
    if not ours_fps:
        return ""
    rows = []
    for key in (*COMPARABLE, *SETUP):
        values = sorted({str(fp.get(key)) for fp in ours_fps if fp.get(key) is not None})
        theirs = paper.get(key)
        differs = theirs is not None and bool(values) and values != [str(theirs)]
        cls = ' class="differs"' if differs and key in COMPARABLE else ""
        rows.append(
            f'<tr><th scope="row">{escape(key)}{"" if key in COMPARABLE else " (setup)"}</th>'
            f"<td>{escape('-' if theirs is None else str(theirs))}</td>"
            f"<td{cls}>{'<br>'.join(map(escape, values)) or '-'}</td></tr>"
        )
    return (
        '<div class="scroll"><table class="fingerprint"><caption>protocol fingerprint: what each side was '
        "measured on; a difference in a key not marked (setup) makes the numbers not comparable</caption>"
        '<thead><tr><th scope="col">key</th><th scope="col">paper</th><th scope="col">ours</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _protocol_section(rep: TableReport, protocol: str) -> str:
    notes = []
    for line in protocol_lines(rep, protocol):
        warn = line.startswith(("NOT COMPARABLE", "†", "‡", "comparable protocol; setup differs"))
        notes.append(f'<p class="note{" warn" if warn else ""}">{_text(line)}</p>')
    return (
        f"<h3>protocol <code>{escape(protocol)}</code></h3>{''.join(notes)}"
        f"{_numbers_table(rep, protocol)}{_fingerprint_table(rep, protocol)}"
    )


def _claims_section(rep: TableReport) -> str:
    if not rep.claims:
        return ""
    header, rows = claim_rows(rep)
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in header)
    body = []
    for cv, row in zip(rep.claims, rows, strict=True):
        verdict = re.sub(r"[^a-z]+", "-", cv.verdict.lower()).strip("-")
        evidence = "".join(f"<li>{escape(pv.evidence)}</li>" for pv in cv.pairs)
        body.append(
            f"<tr><td>{escape(row[0])}</td><td>{escape(row[1])}</td>"
            f'<td><span class="verdict {verdict}">{escape(row[2])}</span></td>'
            f'<td class="evidence"><ul>{evidence}</ul></td></tr>'
        )
    extra = f'<p class="note warn">{escape(UNCONVERGED_INCLUDED)}</p>' if rep.allow_unconverged else ""
    return (
        f'<h3>claims</h3><div class="scroll"><table class="claims"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div><p class="muted">{escape(TEST_NOTE)}</p>{extra}'
    )


def _list_section(title: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    return f"<h3>{escape(title)}</h3><ul>" + "".join(f"<li>{_text(i)}</li>" for i in items) + "</ul>"


#: Captions of the figures every recipe's results support (xmrbench.report.plots).
_FIGURE_CAPTIONS = {
    "curves": "dev score per epoch, mean over seeds (band: lowest to highest seed)",
    "ranks": "histograms of the test ranks, both directions",
    "paper-vs-ours": "paper beside ours (mean ± std over seeds)",
    "sweep": "the first protocol's score against each swept value",
}


def _figures_section(rep: TableReport, figures: Sequence[FigurePng]) -> str:
    if not figures:
        return ""
    prefix = safe_name(rep.recipe.id) + "-"
    captions = {**_FIGURE_CAPTIONS, **{safe_name(f.id): f.title for f in rep.recipe.figures}}
    parts = []
    for name, png in figures:
        stem = name.removesuffix(".png")
        key = stem.removeprefix(prefix)
        caption = captions.get(key, key)
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
            f'<figcaption>{escape(caption)} <span class="muted">({escape(name)})</span></figcaption></figure>'
        )
    return "<h3>figures</h3>" + "".join(parts)


def recipe_section(rep: TableReport, figures: Sequence[FigurePng] = (), *, section_id: str) -> str:
    """One recipe's part of the page: header, tables, claims, figures and notes."""
    r, p = rep.recipe, rep.paper
    provenance = header_lines(rep)[1:]  # the first line is the title, written out below
    synthetic = any(name.startswith("synthetic") for name in rep.datasets)
    facts = "".join(
        f'<li class="note warn">{_text(line)}</li>' if synthetic and line.startswith("ours measured on")
        else f"<li>{_text(line)}</li>"
        for line in provenance
    )
    out = [
        f'<section class="recipe" id="{escape(section_id)}">',
        f"<h2>{escape(p.short)} ({escape(p.venue)} {p.year}), {escape(r.table)}: {escape(r.title)}</h2>",
        f'<p class="paper">{escape(p.title)}. <span class="muted">{escape(p.authors)}.</span> '
        f"Recipe <code>{escape(r.id)}</code>.</p>",
        f'<ul class="facts">{facts}</ul>',
    ]
    out += [_protocol_section(rep, proto) for proto in r.protocols]
    out.append(_claims_section(rep))
    out.append(_figures_section(rep, figures))
    out.append(_list_section("lint of the paper's printed numbers", rep.resolved.warnings))
    out.append(_list_section("known inconsistencies of the paper's printed numbers", rep.resolved.acknowledged))
    out.append(_list_section("notes", [*(f"{row.label}: {row.note}" for row in r.rows if row.note), *r.notes]))
    out.append(_list_section("store problems", rep.problems))
    out.append("</section>")
    return "\n".join(x for x in out if x)


def to_html(
    reports: Sequence[TableReport], figures: Mapping[str, Sequence[FigurePng]] | None = None, *,
    title: str = "xmrbench report", source: str | None = None,
) -> str:
    """The page for ``reports``; ``figures`` maps a recipe id to its figures (PNG bytes),
    ``source`` (e.g. the results store) is named under the title. Returns the HTML text."""
    figures = figures or {}
    taken: set[str] = set()
    ids = [anchor(rep.recipe.id, taken) for rep in reports]
    head = [f"<h1>{escape(title)}</h1>"]
    subtitle = f"{len(reports)} recipe(s)" + (f" from {source}" if source else "")
    head.append(f'<p class="muted">{escape(subtitle)}; paper | ours (mean ± std over seeds, n seeds) | Δ, '
                "and a verdict per claim.</p>")
    if len(reports) > 1:
        items = "".join(
            f'<li><a href="#{escape(sid)}">{escape(rep.recipe.id)}</a>: {escape(rep.paper.short)}, '
            f"{escape(rep.recipe.table)} ({escape(rep.recipe.title)})</li>"
            for rep, sid in zip(reports, ids, strict=True)
        )
        head.append(f'<nav class="toc"><strong>contents</strong><ol>{items}</ol></nav>')
    sections = [recipe_section(rep, figures.get(rep.recipe.id, ()), section_id=sid)
                for rep, sid in zip(reports, ids, strict=True)]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(head) + "\n<main>\n" + "\n".join(sections) + "\n</main>\n"
        f"<footer><p>Written by xmrbench {escape(__version__)}. Self-contained: no part of this page "
        "is loaded from elsewhere.</p></footer>\n</body>\n</html>\n"
    )
