"""The report for a terminal (fitted to its width, rows named by id) and the JSON report
(docs/json-report.md), on a small store of hand-written results: every number the
console prints is in the JSON with the same rounding."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from xmrbench.recipe.resolve import resolve
from xmrbench.report.collect import collect_resolved
from xmrbench.report.console import to_console
from xmrbench.report.json_doc import SCHEMA, VERSION, json_document
from xmrbench.store.store import ResultStore

from support import cli, store_converged_run, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
LONG_ID = "nonlinear-bi-ns-nc-with-a-long-row-id"
ROWS = f"""
  - {{id: {LONG_ID}, label: "Embedding, non-linear, bi-dir., neighbourhood sampling + constraints, with a label longer than any terminal column", paper: {{test: [40.7, 69.7, 79.2, 29.2, 59.6, 71.7]}}}}
  - {{id: linear-single, label: "Embedding, linear, single-dir.", source: Table 3, note: "Runs the linear branch of Sec. 3 with the loss of Eq. 6, which a long note explains at a length no terminal is wide enough for.", paper: {{test: [33.5, 61.7, 73.6, 21.0, 47.4, null]}}}}
  - {{id: mcnn-ensemble, label: "mCNN(ensemble) [63]", run: false, pending: mCNN is not implemented, paper: {{test: [33.6, 64.1, 74.9, 26.2, 56.3, 69.6]}}}}
  - {{id: waiting-row, label: A row without results yet}}
"""
EXTRA = (
    "claims:\n"
    f"  - {{id: long-beats-linear, text: The long row beats the linear one, metric: rsum, pairs: [[{LONG_ID}, linear-single]]}}\n"
    "  - {id: linear-beats-long, text: The linear row beats the long one on R@1, metric: i2t_r1, "
    f"pairs: [[linear-single, {LONG_ID}]]}}\n"
    "notes:\n"
    "  - A recipe note that is much longer than eighty characters, so that the console has to wrap it over lines.\n"
)
#: seed -> metrics of each run, with values whose rounding matters (x.x5 and long decimals)
VALUES = {
    LONG_ID: [[36.15, 69.2, 80.3, 28.61, 59.4, 71.74], [37.25, 68.3, 80.5, 28.8, 59.7, 71.66],
              [35.333, 67.9, 81.0, 29.1, 60.05, 72.0]],
    "linear-single": [[28.6, 57.14, 72.8, 23.5, 54.4, 67.5], [29.3, 58.8, 72.5, 23.7, 54.1, 67.3],
                      [27.95, 56.2, 71.9, 22.9, 53.3, 66.8]],
}
KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?$")


def _stored(tmp_path: Path, rid: str, extra: str):
    """A recipe file of ROWS with ``extra``, its store of three seeds per runnable row (one
    row without results) and its report."""
    path = tmp_path / f"{rid}.yaml"
    path.write_text(tiny_recipe(rid, ROWS, seeds="[0, 1, 2]", extra=extra))
    resolved = resolve(path, profile="smoke")
    store = ResultStore(tmp_path / "store")
    for cell in resolved.cells:
        for seed, values in enumerate(VALUES.get(cell.id, [])):
            store_converged_run(store, resolved, cell, seed, dict(zip(KEYS, values)) | {"rsum": sum(values)},
                                protocols={"test": {"dataset": "synthetic", "images": 100}},
                                env={"git_commit": "0123456789abcdef"})
    return path, store.root, collect_resolved(resolved, store)


@pytest.fixture
def store_report(tmp_path):
    return _stored(tmp_path, "console-test", EXTRA)


def _console_numbers(text: str, ids: list[str]) -> dict[tuple[str, str], set[str]]:
    """(row id, line kind) -> the numbers the console's tables print (a mean±std counts for both)."""
    tables = text.split("── rows ")[0]
    found: dict[tuple[str, str], set[str]] = {}
    current = None
    for line in tables.splitlines():
        match = re.match(r"^(\S+)?\s+(paper|ours|± sd|Δ)\s(.*)$", line)
        if match is None:
            current = None
            continue
        if match.group(1) is not None:
            current = match.group(1) if match.group(1) in ids else None
        kind = "std" if match.group(2) == "± sd" else match.group(2)
        for token in match.group(3).split():
            mean, _, std = token.partition("±")
            for key, value in ((kind, mean), ("std", std)):
                if current is not None and NUMBER.match(value):
                    found.setdefault((current, key), set()).add(value)
    return found


def _json_numbers(report: dict) -> dict[tuple[str, str], set[str]]:
    """The same, from the JSON document, rounded to each column's digits."""
    digits = {c["key"]: c["digits"] for c in report["columns"]}
    out: dict[tuple[str, str], set[str]] = {}
    for cell in report["cells"]:
        proto = cell["protocols"]["test"]
        paper = {f"{v:.{digits[k]}f}" for k, v in proto["paper"].items() if k in digits and v is not None}
        if paper:
            out[(cell["id"], "paper")] = paper
        if proto["ours"]:
            out[(cell["id"], "ours")] = {f"{proto['ours'][k]['mean']:.{d}f}" for k, d in digits.items()}
            out[(cell["id"], "std")] = {f"{proto['ours'][k]['std']:.{d}f}" for k, d in digits.items()}
        if proto["delta"]:
            out[(cell["id"], "Δ")] = {f"{v:+.{digits[k]}f}" for k, v in proto["delta"].items() if k in digits}
    return out


@pytest.mark.parametrize("width", [80, 60, 132])
def test_console_fits_the_width_and_names_every_row_in_full(store_report, width):
    _, _, rep = store_report
    text = to_console([rep], width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(line for line in lines if len(line) > width)
    assert "…" not in text
    for cell in rep.cells:
        assert any(line.split()[:1] == [cell.id] for line in lines), cell.id
    # the legend gives each id its paper label, wrapped
    legend = text.split("── rows ")[1].split("── claims ")[0]
    words = " ".join(legend.split())
    assert "Embedding, non-linear, bi-dir., neighbourhood sampling + constraints, with a label longer" in words
    assert "Embedding, linear, single-dir. [Table 3]" in words and "mCNN(ensemble) [63] (not run)" in words
    # one line per claim: id, verdict, effect, p
    for cv in rep.claims:
        (line,) = [line for line in lines if line.startswith(cv.id + " ")]
        assert cv.label in line
    # the protocol as short labelled lines; the note wrapped, not cut
    assert any(line.startswith("comparable: yes") for line in lines)
    assert any(line.startswith("not run:") and "mcnn-ensemble: mCNN is not implemented" in line for line in lines)
    assert "so that the console has to wrap it over lines." in " ".join(text.split())


def test_columns_that_do_not_fit_go_to_a_second_block_that_repeats_the_row_ids(store_report):
    _, _, rep = store_report
    lines = to_console([rep], width=60).splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("── protocol test"))):
                  lines.index(next(line for line in lines if line.startswith("── rows")))]
    headers = [line for line in table if line.startswith("row ")]
    assert len(headers) >= 2
    for cid in (LONG_ID, "linear-single", "mcnn-ensemble"):
        assert sum(line.split()[:1] == [cid] for line in table) == len(headers)
    wide = to_console([rep], width=200).splitlines()
    assert sum(line.startswith("row ") for line in wide) == 1
    assert any(re.search(r"\d±\d", line) for line in wide)  # room for mean±std on one line


def test_labels_take_the_place_of_ids_wrapped_to_the_width(store_report):
    _, _, rep = store_report
    text = to_console([rep], width=80, labels=True)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "── rows " not in text and "row (label)" in text
    names = " ".join(line[:28] for line in text.splitlines())  # the label column (a third of the width)
    for cell in rep.cells:
        assert cell.id not in text
        assert set(cell.label.split()) <= set(names.split()), cell.label


def test_json_document_round_trips_every_number_the_console_shows(store_report, capsys, monkeypatch):
    import xmrbench.cli.app as app

    path, store, rep = store_report
    monkeypatch.setattr(app, "console", Console(width=80))
    code, shown, err = cli(["report", str(path), "--profile", "smoke", "--results", str(store)], capsys)
    assert code == 0, err
    assert max(len(line) for line in shown.splitlines()) <= 80
    code, out, err = cli(["report", str(path), "--profile", "smoke", "--results", str(store), "--json"], capsys)
    assert code == 0, err

    def no_nan(name: str):
        raise AssertionError(f"{name} is not JSON")

    doc = json.loads(out, parse_constant=no_nan)
    assert doc["schema"] == SCHEMA == "xmrbench/report" and doc["version"] == VERSION == 1
    (report,) = doc["reports"]
    assert report["recipe"] == "console-test" and report["profile"] == "smoke" and report["seeds"] == [0, 1, 2]
    assert report["datasets"] == ["synthetic (ffffffffff)"] and report["commits"] == ["0123456789ab"]
    assert report["machines"] and report["paper"]["short"] == "Two-branch"

    ids = [c["id"] for c in report["cells"]]
    on_console = _console_numbers(shown, ids)
    in_json = _json_numbers(report)
    assert set(on_console) == set(in_json)
    for key, numbers in on_console.items():
        assert numbers == in_json[key], key
    assert (LONG_ID, "Δ") in on_console and (LONG_ID, "std") in on_console

    cell = next(c for c in report["cells"] if c["id"] == "linear-single")
    ours = cell["protocols"]["test"]["ours"]["i2t_r1"]
    assert ours["n"] == 3 and ours["seeds"] == [0, 1, 2]
    assert ours["mean"] == pytest.approx(sum(v[0] for v in VALUES["linear-single"]) / 3)
    assert cell["protocols"]["test"]["paper"]["t2i_r10"] is None and cell["source"] == "Table 3"
    assert "t2i_r10" not in cell["protocols"]["test"]["delta"]
    waiting = next(c for c in report["cells"] if c["id"] == "waiting-row")
    assert waiting["seeds"] == [] and waiting["protocols"]["test"]["ours"] == {}
    pending = next(c for c in report["cells"] if c["id"] == "mcnn-ensemble")
    assert pending["runnable"] is False and pending["pending"] == "mCNN is not implemented"

    claims = {c["id"]: c for c in report["claims"]}
    assert set(claims) == {cv.id for cv in rep.claims}
    for cv in rep.claims:
        got = claims[cv.id]
        assert (got["verdict"], got["metric"], got["protocol"]) == (cv.verdict, cv.metric, cv.protocol)
        for pair, pv in zip(got["pairs"], cv.pairs, strict=True):
            assert pair["evidence"] == pv.evidence and pair["p_holm"] == pv.p_adjusted
            assert pair["seed_test"]["mean_diff"] == pv.seed_test.mean_diff
            assert pair["seed_test"]["test"] == pv.seed_test.test and pair["seeds"] == [0, 1, 2]
    assert report["notes"]["rows"][0]["id"] == "linear-single" and len(report["notes"]["recipe"]) == 1
    assert json_document([rep]) == doc


def test_json_to_a_file(store_report, capsys, tmp_path):
    path, store, _ = store_report
    target = tmp_path / "report.json"
    code, out, err = cli(["report", str(path), "--profile", "smoke", "--results", str(store), "--json", "--out",
                          str(target)], capsys)
    assert code == 0, err
    assert json.loads(target.read_text())["reports"][0]["recipe"] == "console-test"


@pytest.mark.parametrize("other", ["--markdown", "--latex", "--csv"])
def test_json_with_another_format_is_a_one_line_usage_error(store_report, capsys, other):
    path, store, _ = store_report
    code, out, err = cli(["report", str(path), "--results", str(store), "--json", other], capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "--json" in err and "Traceback" not in err
    assert out == ""


def test_the_schema_page_names_every_field():
    """docs/json-report.md describes each key the document has (a new key needs a line there)."""
    page = (ROOT / "docs" / "json-report.md").read_text()
    assert "version" in page and "only added" in page
    keys = {"schema", "version", "reports"}
    report_keys = ("recipe kind title table paper profile seeds n_results datasets machines commits "
                   "allow_unconverged columns protocols cells claims warnings acknowledged notes problems")
    keys |= set(report_keys.split())
    keys |= {"key", "label", "scale", "digits", "description", "comparable", "differences", "setup_differences",
             "id", "source", "runnable", "pending", "config_differs", "unconverged", "ours", "delta", "mean",
             "std", "n", "text", "metric", "protocol", "margin", "verdict", "pairs", "better", "worse",
             "deterministic", "p_holm", "min_effect", "reason", "seed_test", "query_test", "tost", "evidence",
             "test", "mean_diff", "p_greater", "p_less", "p_two_sided", "diff_sd", "seeds_for_power", "plan_level", "exact", "p_lower", "p_upper", "p_above",
             "p_below", "p_tost", "p_outside", "rows", "note", "short", "authors", "venue", "year"}
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert not missing, missing


def test_a_claim_with_some_pairs_judged_says_how_many(tmp_path):
    """A claim of two pairs, one of them without results: untested as a whole, and its
    pairs column says that one of the two was judged (the legend explains j/n)."""
    extra = EXTRA.replace(f"pairs: [[{LONG_ID}, linear-single]]", f"pairs: [[{LONG_ID}, linear-single], "
                                                                   f"[waiting-row, linear-single]]")
    text = to_console([_stored(tmp_path, "console-partial", extra)[2]], width=80)
    (line,) = [line for line in text.splitlines() if line.startswith("long-beats-linear ")]
    assert line.split()[1] == "untested" and " 1/2 " in line
    (other,) = [line for line in text.splitlines() if line.startswith("linear-beats-long ")]
    assert not re.search(r"\s\d+/\d+\s", other)  # both of its pairs judged: a plain count
    assert "pairs j/n: only j of the claim's n pairs could be judged" in " ".join(text.split())
    assert max(len(x) for x in text.splitlines()) <= 80


def test_a_row_that_does_not_evaluate_a_protocol_leaves_its_section(tmp_path):
    """A row narrowed to other protocols (``eval.protocols``) is left out of a protocol's
    section when the paper prints nothing there, and says it is not evaluated when it does,
    in the console and in Markdown; a row that evaluates the protocol is unaffected."""
    rows = ROWS + (
        "  - {id: narrowed-silent, label: Narrowed without numbers, set: {eval.protocols: [dev]}}\n"
        "  - {id: narrowed-printed, label: Narrowed with numbers, set: {eval.protocols: [dev]}, "
        "paper: {test: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}}\n"
    )
    path = tmp_path / "narrowed.yaml"
    path.write_text(tiny_recipe("narrowed", rows, seeds="[0, 1, 2]", extra=EXTRA))
    rep = collect_resolved(resolve(path, profile="smoke"), ResultStore(tmp_path / "store"))
    text = to_console([rep], width=120)
    table = text.split("── rows")[0]
    assert "narrowed-silent" not in table
    (line,) = [x for x in table.splitlines() if x.startswith("narrowed-printed")]
    assert "paper" in line
    assert "not evaluated on this protocol" in table
    assert "waiting-row" in table  # evaluates the protocol, no results yet
    from xmrbench.report.render import table_rows

    _, md_rows = table_rows(rep, "test")
    kinds = {r[0]: r[1] for r in md_rows if r[0]}
    assert "Narrowed without numbers" not in kinds
    assert kinds["Narrowed with numbers"] == "paper (not evaluated on this protocol)"
    assert kinds["A row without results yet"] == "ours: no results yet"
