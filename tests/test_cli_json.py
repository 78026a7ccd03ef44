"""``--json`` on list, show, plan, check, bench, env and data check: one document in a
versioned envelope that agrees with the console; the console at 80 columns; shell
completion of recipe and row ids."""

from __future__ import annotations

import io
import json
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import pytest

from xmrbench.cli import app as A
from xmrbench.cli.completion import complete_recipe, complete_rows
from xmrbench.cli.json_out import VERSIONS, convergence_label
from xmrbench.recipe.load import recipe_index
from xmrbench.recipe.resolve import resolve

from support import REPO, tiny_recipe

RECIPE = "two-branch-table2"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TINY = tiny_recipe("json-test", """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: paper-only, label: Printed by the paper, run: false, paper: {test: {i2t_r1: 1.0}}}
""")


def xmr(*args: str, columns: int = 80) -> tuple[int, str, str]:
    """``xmrbench ARGS`` in this process with the terminal ``columns`` wide: ``(code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        mp.setenv("COLUMNS", str(columns))
        for con in (A.console, A.err_console):
            mp.setattr(con, "_width", None)  # read COLUMNS now, not when the module was imported
        mp.setattr(sys, "argv", ["xmrbench", *args])
        try:
            A.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, ANSI.sub("", out.getvalue()), ANSI.sub("", err.getvalue())


def doc_of(verb: str, text: str) -> dict:
    """The one document on stdout, with its envelope checked."""
    doc = json.loads(text)
    assert doc["schema"] == f"xmrbench/{verb}" and doc["version"] == VERSIONS[verb] == 1
    return doc


def assert_narrow(text: str, width: int = 80) -> None:
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, "\n".join(long)
    assert "…" not in text


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first console table (below its rule), split into cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("───")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            continue
        if not line.startswith(" ") and re.match(r"^\S+\s{2,}", line) is None:
            break
        rows.append(line.split())
    return rows


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("empty-store"))


@pytest.fixture(scope="module")
def listed(empty_store):
    """``list`` and ``list --json`` once for the module."""
    console = xmr("list", "--results", empty_store)
    as_json = xmr("list", "--results", empty_store, "--json")
    return console, as_json


def test_list_json_has_every_recipe_the_console_prints(listed):
    (code, out, err), (jcode, jout, _) = listed
    assert code == 0 and jcode == 0, err
    assert_narrow(out)
    doc = doc_of("list", jout)
    ids = [r["id"] for r in doc["recipes"]]
    assert ids == list(recipe_index())
    printed = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in ids]
    assert printed == ids  # every id, whole, in order
    for r in doc["recipes"]:
        line = next(line for line in out.splitlines() if line.startswith(r["id"] + " "))
        if not r["has_profile"]:
            assert line.split()[-3:] == ["-", "-", "-"] and r["done"] is None
            continue
        assert r["done"] == 0 and r["runs"] >= r["runnable"]
        assert line.split()[-3:] == [str(r["cells"]), str(r["runnable"]), f"0/{r['runs']}"]


def test_show_at_80_columns_keeps_every_cell_id_and_hash():
    code, out, err = xmr("show", RECIPE)
    assert code == 0, err
    assert_narrow(out)
    resolved = resolve(RECIPE, profile="quick", require_data=False)
    starts = {line.split()[0]: line.split()[1] for line in out.splitlines() if len(line.split()) > 1}
    for cell in resolved.cells:
        assert starts.get(cell.id) == (cell.hash or "-"), cell.id


def test_show_json_keeps_the_resolved_recipe_at_the_top_level():
    code, out, _ = xmr("show", RECIPE, "--json")
    doc = doc_of("show", out)
    resolved = resolve(RECIPE, profile="quick", require_data=False)
    assert code == 0 and doc["id"] == RECIPE and doc["hash"] == resolved.hash
    assert [(c["id"], c["hash"]) for c in doc["cells"]] == [(c.id, c.hash) for c in resolved.cells]
    by_id = {c["id"]: c for c in doc["cells"]}
    assert by_id["linear-single"]["settings"] == {"model.linear": True, "loss.lambda1": 0.0, "loss.lambda2": 1.0}
    assert by_id["mcnn-ensemble"]["runnable"] is False and "not implemented" in by_id["mcnn-ensemble"]["pending"]


def test_plan_at_80_columns_shows_every_row_of_two_branch_table2(empty_store):
    code, out, err = xmr("plan", RECIPE, "--results", empty_store)
    assert code == 0, err
    assert_narrow(out)
    resolved = resolve(RECIPE, profile="quick", require_data=False)
    rows = table_rows(out)
    assert {r[0] for r in rows} == {c.id for c in resolved.runnable_cells()}
    assert all(r[2] == "missing" for r in rows) and "33 of 33 runs to do" in out


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """A tiny recipe with row ``a`` run (seed 0 of 0, 1) and ``b`` not."""
    from xmrbench.runner.driver import reproduce
    from xmrbench.store.store import ResultStore

    root = tmp_path_factory.mktemp("half-done")
    path = root / "json-test.yaml"
    path.write_text(TINY.replace("seeds: [0]", "seeds: [0, 1]"))
    store = ResultStore(root / "results")
    resolved = resolve(path, profile="smoke", seeds=[0]).restricted_to_rows(["a"])
    assert reproduce(resolved, store, device="cpu").ok
    return str(path), str(store.root)


def test_plan_json_agrees_with_the_console(half_done):
    path, store = half_done
    code, out, err = xmr("plan", path, "--profile", "smoke", "--results", store)
    jcode, jout, _ = xmr("plan", path, "--profile", "smoke", "--results", store, "--json")
    assert code == 0 and jcode == 0, err
    doc = doc_of("plan", jout)
    resolved = resolve(path, profile="smoke")
    assert doc["recipe"] == "json-test" and doc["seeds"] == [0, 1]
    runs = {(r["cell"], r["seed"]): r for r in doc["runs"]}
    assert set(runs) == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}  # the row not run is not planned
    assert runs["a", 0]["state"] == "done" and not runs["a", 0]["todo"]
    assert [r["state"] for k, r in sorted(runs.items()) if k != ("a", 0)] == ["missing"] * 3
    assert all(r["hash"] == resolved.cell(r["cell"]).hash and r["row"] == r["cell"] for r in doc["runs"])
    record = runs["a", 0]["convergence"]
    assert record["converged"] is False and record["epochs"] == 1 and record["reason"]
    assert doc["summary"] == {**doc["summary"], "runs": 4, "todo": 3, "artifacts_todo": 0}
    # the console's rows, one per run: cell, seed, state, and the convergence of done runs
    for row in table_rows(out):
        r = runs[row[0], int(row[1])]
        assert row[2] == r["state"]
        if r["state"] == "done":
            assert " ".join(row[3:]) == convergence_label(r["convergence"]) == "no (1 epoch(s), needs > 3)"
    assert "3 of 4 runs to do" in out


def test_convergence_labels_are_short():
    assert convergence_label(None) == "?"
    assert convergence_label({"converged": True, "criterion": "closed form"}) == "yes (closed form)"
    plateau = {"converged": True, "criterion": "plateau", "epochs": 12, "gain": 0.004, "window": 3}
    assert convergence_label(plateau) == "yes (plateau, 12 epochs)"
    rising = {**plateau, "converged": False, "gain": 0.05, "epochs": 20}
    assert convergence_label(rising) == "no (still improving, 20 epochs)"


def test_errors_print_no_document():
    code, out, err = xmr("plan", "no-such-recipe", "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no-such-recipe" in err
    code, out, err = xmr("list", "--json", "--profile")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------
# check


def _gate(learning_mean: float, *, broken_golden: bool):
    from xmrbench.gate.check import GateResult, RecipeCheck
    from xmrbench.gate.goldens import GoldenDiff
    from xmrbench.gate.learning import LearningCheck

    check = LearningCheck(RECIPE, "linear-bi", "test", "rsum", "learns", chance=30.0, bar=60.0,
                          reference_mean=200.0, tolerance=5.0, current=(learning_mean,) * 3)
    recipe = RecipeCheck(RECIPE, "checked", runs=3, replay=False, learning=[check])
    diffs = [GoldenDiff("loss/a/value", 0.0, 0.0, 1e-9, 1e-12, None)]
    if broken_golden:  # differs where its allowance is 0: an infinite ratio
        diffs.append(GoldenDiff("sim/b", 1e-3, 1e-3, 0.0, 0.0, None, ratio=float("inf")))
    return GateResult([recipe], kernels=diffs, kernels_note=f"{len(diffs)} goldens compared with goldens.json")


@pytest.mark.parametrize("passing", [True, False])
def test_check_json_reports_each_layer_with_its_band_and_exit_code(passing, monkeypatch, tmp_path):
    import xmrbench.gate.check as G

    mean = 201.0 if passing else 150.0
    monkeypatch.setattr(G, "run_check", lambda *a, **k: _gate(mean, broken_golden=not passing))
    args = ("check", RECIPE, "--executor", "local", "--reference", str(tmp_path))
    code, out, err = xmr(*args, "--json")
    doc = doc_of("check", out)
    assert code == doc["exit_code"] == (0 if passing else 1) and doc["passed"] is passing
    assert doc["mode"] == "check" and doc["layers"] == ["kernels", "learning", "replay"]
    kernels = doc["kernels"]
    assert kernels["beyond"] == (0 if passing else 1) and kernels["compared"] == len(kernels["goldens"])
    if not passing:
        assert kernels["goldens"][1]["ratio"] is None and kernels["goldens"][1]["passed"] is False
    (recipe,) = doc["recipes"]
    (check,) = recipe["learning"]
    assert check["values"] == [mean] * 3 and check["mean"] == mean and check["bar"] == 60.0
    assert check["band"] == [195.0, 205.0] and check["reference_mean"] == 200.0 and check["tolerance"] == 5.0
    assert check["passed"] is passing and (check["why"] is None) is passing
    assert recipe["replay"]["applied"] is False and recipe["passed"] is passing
    assert ("check failed" in err and len(err.strip().splitlines()) == 1) is not passing
    # the console: the same numbers, its summary table within 80 columns
    code, out, err = xmr(*args)
    assert code == (0 if passing else 1)
    assert f"kernels: {0 if passing else 1} beyond tolerance" in out
    summary = [line for line in out.splitlines() if "| checked |" in line or line.startswith("| recipe ") and "| state " in line]
    assert len(summary) == 2 and ("| 1/1 " if passing else "| 0/1 ") in summary[1]
    assert_narrow("\n".join(summary))
    if not passing:
        assert "195.00" not in out and "200.00 ± 5.00" in out and "150.00" in out


def test_check_kernels_json_and_console():
    reference = str(REPO / "results" / "reference")
    code, out, err = xmr("check", RECIPE, "--layers", "kernels", "--reference", reference, "--json")
    doc = doc_of("check", out)
    assert code == 0 == doc["exit_code"] and doc["passed"] and doc["recipes"] == []
    assert doc["kernels"]["beyond"] == 0 and doc["kernels"]["compared"] == len(doc["kernels"]["goldens"]) > 100
    assert "check passed" in err  # the console's summary goes to stderr with --json
    code, out, _ = xmr("check", RECIPE, "--layers", "kernels", "--reference", reference)
    assert code == 0 and "kernels: 0 beyond tolerance" in out
    assert_narrow(out)


# ---------------------------------------------------------------------------------
# bench, env, data check


def test_bench_json_stores_the_run_and_report_renders_it(monkeypatch, tmp_path):
    import xmrbench.bench.registry as R
    from xmrbench.bench.harness import BenchResult, Ceilings, KernelRecord, Timing

    fake = BenchResult("eval", "ranks", [Timing("ranks", 0.5, 3, work=10.0, unit="pair")], {"speed-up": 2.0}, ["n"])
    fake.kernels.append(KernelRecord("eval", "10x50, d=4", 0.5, 2e9, "flop", 0.25, "the GEMM", 10.0, "a loop",
                                     targets={"ratio_to_floor": 1.3, "speedup_vs_peer": 10.0}))
    ceilings = Ceilings(flop=8e9, exp=1e9, byte=1e10)
    monkeypatch.setattr(R, "run_benchmarks", lambda names, dev, quick: R.BenchRun(ceilings, [fake]))
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    code, out, _ = xmr("bench", "eval", "--device", "cpu", "--json", "--results", "store")
    doc = doc_of("bench", out)
    assert code == 0 and doc["env"]["device"] == "cpu" and doc["sizes"] == "quick"
    assert doc["ceilings"] == {"gemm_flop_per_s": 8e9, "exp_per_s": 1e9, "copy_byte_per_s": 1e10}
    (res,) = doc["results"]
    assert res["name"] == "eval" and res["timings"][0]["rate"] == 20.0 and res["ratios"] == {"speed-up": 2.0}
    (kernel,) = doc["kernels"]
    assert kernel["ratio_to_floor"] == 2.0 and kernel["speedup_vs_peer"] == 20.0 and kernel["peak_extra_bytes"] is None
    assert kernel["targets_met"] == {"ratio_to_floor": False, "speedup_vs_peer": True}
    (stored,) = (store / "_bench").glob("bench-*.json")
    assert json.loads(stored.read_text()) == doc  # the store keeps exactly what --json prints
    code, out, _ = xmr("bench", "eval", "--device", "cpu", "--results", "store")
    assert code == 0 and "speed-up: 2" in out and "2.00" in out and "judged at --full" in out
    assert_narrow(out)
    code, out, _ = xmr("report", "--bench", "--results", "store")
    assert code == 0 and "eval" in out and "GEMM 8e+09 FLOP/s" in out and out.count("10x50, d=4") == 1
    assert_narrow(out)
    code, out, _ = xmr("report", "--bench", "--results", "store", "--markdown")
    assert code == 0 and "| eval " in out and "≤1.3× floor; ≥10× peer (judged at --full sizes)" in out
    code, out, err = xmr("report", "--bench", "--results", str(tmp_path / "none"))
    assert code == 2 and out == "" and "no bench runs" in err


def test_env_json_wraps_the_plain_object():
    code, out, _ = xmr("env", "--device", "cpu")
    plain = json.loads(out)
    assert code == 0 and "schema" not in plain
    code, out, _ = xmr("env", "--device", "cpu", "--json")
    doc = doc_of("env", out)
    assert code == 0 and set(doc) == {"schema", "version", "env"} and set(doc["env"]) == set(plain)


def test_data_check_json(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("a 1 2 3\nb 4 5 6\n")
    bad.write_text("a 1 2 3\nb 4 5\n")
    code, out, _ = xmr("data", "check", str(good), "--json")
    doc = doc_of("data-check", out)
    assert code == 0 and doc["ok"] and doc["layout"] == "word_vectors" and doc["problems"] == []
    assert any("2 words x 3 dims" in line for line in doc["summary"])
    code, out, err = xmr("data", "check", str(bad), "--json")
    doc = doc_of("data-check", out)
    assert code == 2 and not doc["ok"] and "line 2" in doc["problems"][0] and "line 2" in err


# ---------------------------------------------------------------------------------
# completion


def test_recipe_ids_complete():
    got = complete_recipe("two-branch-t")
    assert RECIPE in got and all(r.startswith("two-branch-t") for r in got)
    assert set(complete_recipe("")) == set(recipe_index())
    assert complete_recipe("zz") == []


def test_row_ids_of_the_named_recipe_complete():
    ctx = SimpleNamespace(params={"recipe": RECIPE}, args=[])
    assert [v for v, _ in complete_rows(ctx, "nonlinear-bi-n")] == ["nonlinear-bi-ns", "nonlinear-bi-ns-nc"]
    # after a comma: the rows not listed yet, completing the last item
    got = [v for v, _ in complete_rows(ctx, "linear-bi,")]
    assert "linear-bi,linear-single" in got and "linear-bi,linear-bi" not in got
    assert all(v.startswith("linear-bi,") for v in got)
    everything = [v for v, _ in complete_rows(ctx, "")]
    assert "mcnn-ensemble" not in everything and "similarity-net" in everything  # rows not run are not offered
    # check names recipes as a list; an option waiting for its value leaves them in ctx.args
    assert complete_rows(SimpleNamespace(params={"recipes": (RECIPE,)}, args=[]), "simi")[0][0] == "similarity-net"
    assert complete_rows(SimpleNamespace(params={"recipe": None}, args=[RECIPE]), "simi")[0][0] == "similarity-net"
    assert complete_rows(SimpleNamespace(params={"recipe": "no-such-recipe"}, args=[]), "") == []


def test_completion_through_the_shell_protocol(monkeypatch):
    monkeypatch.setenv("_XMRBENCH_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", f"xmrbench plan {RECIPE} --rows linear-bi,nonlinear-bi-n")
    monkeypatch.setenv("COMP_CWORD", "4")
    code, out, _ = xmr()
    assert code == 0 and out.split() == ["linear-bi,nonlinear-bi-ns", "linear-bi,nonlinear-bi-ns-nc"]
    monkeypatch.setenv("COMP_WORDS", "xmrbench show two-branch-table4")
    monkeypatch.setenv("COMP_CWORD", "2")
    code, out, _ = xmr()
    assert code == 0 and out.split() == ["two-branch-table4-flickr30k", "two-branch-table4-mscoco"]
