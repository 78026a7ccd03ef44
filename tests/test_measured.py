"""The versioned store of measured quick results (results/measured): every document is a
readable result of the quick profile, measured on the synthetic world and labelled so,
of a recipe that exists; no weights are versioned but those of the round-one teachers
whose candidate lists the second round reads; and the report reads the store
without training anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xmrbench.recipe.load import recipe_index
from xmrbench.store.store import ResultStore

from support import cli

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "results" / "measured"


def _docs() -> list[tuple[Path, object]]:
    store = ResultStore(MEASURED)
    out = []
    for recipe_id in store.recipe_ids():
        for path, doc, problem in store.iter_results(recipe_id):
            assert problem is None and doc is not None, f"{path}: {problem}"
            out.append((path, doc))
    return out


def test_every_measured_document_is_a_synthetic_quick_result_of_a_known_recipe():
    docs = _docs()
    assert docs, "results/measured holds no result documents"
    known = recipe_index()
    for path, doc in docs:
        assert doc.recipe.id in known and doc.recipe.profile == "quick", path
        assert doc.dataset.name.startswith("synthetic-"), path  # never a real dataset's number
        assert doc.dataset.info.get("source") == "synthetic", path
        assert path.parent.name == doc.recipe.id, path


def _teachers() -> set[str]:
    """``<recipe>/models/<run>.pt`` of every stored run whose model a row mines an artifact
    from (AOQ's round-one teachers)."""
    from xmrbench.recipe.resolve import resolve

    store = ResultStore(MEASURED)
    out = set()
    for recipe_id in store.recipe_ids():
        resolved = resolve(recipe_index()[recipe_id], profile="quick")
        sources = {(ref.source.id, ref.source.hash) for cell in resolved.runnable_cells() if cell.needs is not None
                   for ref in cell.needs.artifacts}
        for path, doc, _ in store.iter_results(recipe_id):
            if doc is not None and (doc.cell.id, doc.cell.hash) in sources:
                out.add(f"{recipe_id}/models/{path.stem}.pt")
    return out


def test_no_weights_but_the_teachers_and_no_working_files_are_versioned():
    """Weights are versioned only for a round-one teacher whose document is here too: its
    candidate lists can then be mined again for more second-round rows without training
    round one again (a retrained teacher on another CPU differs in its last bits)."""
    try:
        files = subprocess.run(["git", "ls-files", "results/measured"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert files
    teachers = _teachers()
    for name in files:
        assert "/_artifacts/" not in name and "/.work/" not in name, name
        if "/models/" in name:
            assert name.removeprefix("results/measured/") in teachers, f"{name}: weights of a run that is not a teacher"
            continue
        assert name.endswith((".json", ".md", ".gitignore")), name


def test_the_report_reads_the_measured_store(capsys):
    recipes = sorted({doc.recipe.id for _, doc in _docs()})
    code, out, err = cli(["report", recipes[0], "--profile", "quick", "--results", str(MEASURED), "--markdown"], capsys)
    assert code == 0, err
    assert "synthetic" in out.lower() and "NOT COMPARABLE" in out


def test_every_claim_of_aoq_table1_is_judged_over_three_seeds(capsys):
    """aoq-table1 is complete in the store: every pair of every claim has seeds 0-2, and
    the verdicts are the ones docs/calibration.md reports (none significant)."""
    import json

    code, out, err = cli(["report", "aoq-table1", "--profile", "quick", "--results", str(MEASURED), "--json"],
                         capsys)
    assert code == 0, err
    (report,) = json.loads(out)["reports"]
    claims = {c["id"]: c for c in report["claims"]}
    assert len(claims) == 6
    for claim in claims.values():
        assert claim["pairs"], claim["id"]
        for pair in claim["pairs"]:
            assert pair["seeds"] == [0, 1, 2], (claim["id"], pair["better"], pair["worse"])
        assert claim["verdict"] == "not significant", claim["id"]
