"""``xmrbench check``: tolerances, the comparison against references (by hand-built cases),
and the gate end to end on a tiny recipe: --update, pass, a regression (exit 1 and a diff
table), a missing or stale reference, skipped recipes; and the committed references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from xmrbench.errors import ConfigError
from xmrbench.runner.check import (
    ENV_KEYS,
    MetricDiff,
    Tolerances,
    compare_runs,
    load_tolerances,
    read_reference,
    run_key,
)

from support import cli, tiny_recipe

REPO = Path(__file__).resolve().parents[1]

RECIPE = tiny_recipe(
    "tiny-check",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
""",
    title="check test",
    loss="{name: hardest_negative}",
    batch_size=250,
)

PENDING = """id: tiny-pending
paper: two_branch
table: T
title: nothing runs
columns: [i2t_r1]
protocols:
  test: {dataset: synthetic, images: 100}
profiles:
  smoke: {seeds: [0], config: {data: {size: tiny}}}
rows:
  - {id: x, label: X, run: false, pending: "not implemented", paper: {test: [1.0]}}
"""

TOL = Tolerances(
    "tol.yaml",
    same_environment=(("*", 0.0),),
    other_environment=(("i2t_r*", 3.0), ("rsum", 12.0), ("*", 1.0)),
)
ENV = {k: f"v-{k}" for k in ENV_KEYS}




pytestmark = pytest.mark.usefixtures("one_thread")


def _runs(**metrics: float) -> dict:
    return {run_key("a", 0): {"cell": "a", "seed": 0, "hash": "h", "metrics": {"test": dict(metrics)}}}


def _reference(runs: dict, env: dict = ENV) -> dict:
    return {"kind": "xmrbench.reference", "version": 1, "env": env, "runs": list(runs.values())}


# ---------------------------------------------------------------------------------
# tolerances and comparison


def test_tolerances_first_matching_pattern_wins():
    assert TOL.of("i2t_r5", same_env=False) == 3.0 and TOL.of("t2i_r5", same_env=False) == 1.0
    assert TOL.of("rsum", same_env=False) == 12.0 and TOL.of("rsum", same_env=True) == 0.0
    strict = Tolerances("t.yaml", (("i2t_*", 0.0),), (("i2t_*", 1.0),))
    with pytest.raises(ConfigError) as info:
        strict.of("rsum", same_env=True)
    assert "t.yaml" in info.value.one_line() and "rsum" in info.value.one_line()


def test_identical_metrics_pass_with_zero_tolerance():
    runs = _runs(i2t_r1=12.0, rsum=100.4)
    result = compare_runs("r", _reference(runs), runs, ENV, TOL)
    assert result.same_env and result.passed and result.compared == 2 and not result.diffs


@pytest.mark.parametrize(
    ("now", "same_env", "beyond"),
    [
        (12.5, True, True),  # same environment: any change is a regression
        (14.9, False, False),  # other environment: within 3 points
        (15.5, False, True),
        (9.2, False, False),  # either direction
        (8.9, False, True),
        (math.nan, False, True),  # a metric that became NaN
    ],
)
def test_a_change_beyond_its_tolerance_is_a_regression(now, same_env, beyond):
    ref = _runs(i2t_r1=12.0)
    env = ENV if same_env else {**ENV, "cpu": "another cpu"}
    result = compare_runs("r", _reference(ref), _runs(i2t_r1=now), env, TOL)
    assert result.same_env is same_env
    assert len(result.diffs) == 1 and result.diffs[0].beyond is beyond and result.passed is not beyond
    want_delta = now - 12.0
    assert result.diffs[0].delta == pytest.approx(want_delta, nan_ok=True)


def test_nan_equals_nan():
    diff = MetricDiff("r", "a seed0", "test", "i2t_meanr", math.nan, math.nan, 0.0)
    assert diff.delta == 0.0 and not diff.beyond


def test_missing_runs_protocols_and_metrics_are_problems():
    ref = {
        run_key("a", 0): {"cell": "a", "seed": 0, "metrics": {"test": {"rsum": 1.0, "i2t_r1": 2.0}, "dev": {"rsum": 1.0}}},
        run_key("gone", 0): {"cell": "gone", "seed": 0, "metrics": {"test": {"rsum": 1.0}}},
    }
    now = {
        run_key("a", 0): {"cell": "a", "seed": 0, "metrics": {"test": {"rsum": 1.0, "t2i_r1": 3.0}}},
        run_key("new", 1): {"cell": "new", "seed": 1, "metrics": {"test": {"rsum": 1.0}}},
    }
    result = compare_runs("r", _reference(ref), now, ENV, TOL)
    problems = "\n".join(result.problems)
    assert not result.passed and len(result.problems) == 5
    assert "new seed1: no reference" in problems and "gone seed0: in the reference but not run" in problems
    assert "protocol 'dev' is missing from this run" in problems
    assert "test.i2t_r1 is missing from this run" in problems and "test.t2i_r1 is missing from the reference" in problems


def test_tolerance_files_are_validated(tmp_path):
    path = tmp_path / "tol.yaml"
    for text, fragment in [
        ("[1, 2]\n", "expected a mapping"),
        ("same_environment: {'*': 0}\n", "other_environment"),
        ("same_environment: {'*': 0}\nother_environment: {rsum: many}\n", "other_environment.rsum"),
        ("same_environment: {'*': 0}\nother_environment: {rsum: .inf}\n", "other_environment.rsum"),
        ("same_environment: {'*': 0\n", "YAML syntax error"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_tolerances(path)
        assert str(path) in info.value.one_line() and fragment in info.value.one_line(), info.value.one_line()
    with pytest.raises(ConfigError, match="not found"):
        load_tolerances(tmp_path / "none.yaml")


def test_the_committed_tolerances_and_references_are_valid():
    from xmrbench.core.metrics.keys import METRICS
    from xmrbench.recipe.load import recipe_index

    reference = REPO / "results" / "reference"
    tol = load_tolerances(reference / "tolerances.yaml")
    for key in METRICS:  # every metric has a tolerance in both environments
        assert tol.of(key, same_env=True) == 0.0
        assert 0.0 < tol.of(key, same_env=False)
    known = set(recipe_index())
    files = sorted(reference.glob("*.json"))
    assert files
    for path in files:
        doc = read_reference(path)
        assert doc["recipe"] in known and doc["profile"] == "smoke" and set(doc["env"]) == set(ENV_KEYS)
        assert all(set(m) <= set(METRICS) for run in doc["runs"] for m in run["metrics"].values())
        assert path.stat().st_size < 64 * 1024  # small: metrics only, no ranks


# ---------------------------------------------------------------------------------
# end to end


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "t").mkdir(parents=True)
    (folder / "t" / "check.yaml").write_text(RECIPE)
    (folder / "t" / "pending.yaml").write_text(PENDING)
    monkeypatch.setenv("XMRBENCH_RECIPES", str(folder))
    ref = tmp_path / "reference"
    ref.mkdir()
    (ref / "tolerances.yaml").write_text((REPO / "results" / "reference" / "tolerances.yaml").read_text())
    return ref


def test_check_end_to_end(recipes, tmp_path, capsys):
    ref, store = recipes, tmp_path / "store"
    base = ["check", "--reference", str(ref), "--results", str(store)]
    # no reference yet: a failure that says how to record one
    code, out, err = cli(base, capsys)
    assert code == 1 and "no reference for tiny-check" in out and "check --update tiny-check" in out
    assert "tiny-pending | skipped" in out and "all run: false" in out
    assert err.strip().splitlines() == ["error: check failed: 0 metric(s) beyond tolerance, 1 other problem(s) in 1 recipe(s)"]
    # record, then the same code passes bit for bit (same machine, same environment)
    code, out, _ = cli([*base, "--update"], capsys)
    assert code == 0 and "check updated: 1 recipe(s), 1 skipped" in out
    doc = json.loads((ref / "tiny-check.json").read_text())
    assert [r["cell"] for r in doc["runs"]] == ["a", "b"] and "ranks" not in json.dumps(doc)
    code, out, _ = cli(base, capsys)
    assert code == 0 and "check passed" in out and "| same " in out
    # a regression: the reference says otherwise for one metric
    doc["runs"][1]["metrics"]["test"]["t2i_r5"] += 0.4
    (ref / "tiny-check.json").write_text(json.dumps(doc))
    code, out, err = cli(base, capsys)
    assert code == 1 and "1 metric(s) beyond tolerance" in err and len(err.strip().splitlines()) == 1
    row = next(line for line in out.splitlines() if "test.t2i_r5" in line)
    assert "b seed0" in row and "-0.4" in row and "REGRESSION" in row
    # a temporary store is removed afterwards; the reference of a removed recipe is stale
    (ref / "old-recipe.json").write_text(json.dumps({**doc, "recipe": "old-recipe"}))
    code, out, _ = cli(["check", "--reference", str(ref), "--update"], capsys)
    assert code == 0 and "removed" in out and not (ref / "old-recipe.json").exists()
    code, out, _ = cli(base, capsys)  # --update recorded the computed value again
    assert code == 0 and "check passed" in out


def test_check_of_a_named_recipe_only(recipes, tmp_path, capsys):
    ref = recipes
    (ref / "stray.json").write_text("{}")  # not looked at when recipes are named
    code, out, _ = cli(["check", "tiny-check", "--reference", str(ref), "--update"], capsys)
    assert code == 0 and "tiny-check" in out and "tiny-pending" not in out
    code, out, _ = cli(["check", "tiny-check", "--reference", str(ref)], capsys)
    assert code == 0 and "check passed: 1 recipe(s)" in out
