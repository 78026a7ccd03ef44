"""Equivalence claims ("A matches B within a margin"): the TOST p-values, the verdicts,
the schema (margin required, defaults left out of dumps), and the report."""

from __future__ import annotations

import math

import pytest
from scipy import stats as st

from xmrbench.errors import RecipeError
from xmrbench.recipe.load import load_recipe
from xmrbench.recipe.resolve import resolve
from xmrbench.recipe.schema import Claim, Recipe
from xmrbench.report.collect import collect_resolved
from xmrbench.report.render import TEST_NOTE, to_markdown
from xmrbench.stats.claims import Side, judge
from xmrbench.stats.paired import holm, seed_test, seed_tost

from support import store_converged_run, tiny_recipe


def equivalent(*pairs, margin=1.0, metric="pl_r1", cid="eq"):
    return (cid, "A matches B", metric, "test", list(pairs), "equivalent", margin)


def sides_of(**cells: dict[int, float]) -> dict[tuple[str, str, str], Side]:
    return {(cell, "pl_r1", "test"): Side(values) for cell, values in cells.items()}


# --- the tests ------------------------------------------------------------------------


def test_tost_p_values_by_hand_on_three_seeds():
    # d = a - b = [0.3, 0.5, -0.1]: mean 7/30, sample variance 21/225, se = sqrt(7) / 15
    a, b, m = [51.0, 51.4, 50.8], [50.7, 50.9, 50.9], 1.0
    res = seed_tost(a, b, m)
    t_lower = (7 / 30 + m) / (math.sqrt(7) / 15)  # = 37 / (2 sqrt 7), H0a: mean <= -m
    t_upper = (7 / 30 - m) / (math.sqrt(7) / 15)  # = -23 / (2 sqrt 7), H0b: mean >= +m
    assert t_lower == pytest.approx(37 / (2 * math.sqrt(7)))
    assert res.n == 3 and res.mean_diff == pytest.approx(7 / 30) and not res.exact
    assert res.p_lower == pytest.approx(st.t.sf(t_lower, df=2))
    assert res.p_upper == pytest.approx(st.t.cdf(t_upper, df=2))
    # two degrees of freedom have a closed-form CDF: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    cdf2 = lambda t: 0.5 + t / (2 * math.sqrt(2 + t * t))  # noqa: E731
    assert res.p_lower == pytest.approx(1 - cdf2(t_lower))
    assert res.p_upper == pytest.approx(cdf2(t_upper))
    assert res.p_tost == pytest.approx(max(1 - cdf2(t_lower), cdf2(t_upper)))
    assert res.p_tost == pytest.approx(0.0245, abs=1e-4)
    # the tests that the mean lies outside the margin: the complements here
    assert res.p_above == pytest.approx(1 - cdf2(t_upper))
    assert res.p_below == pytest.approx(cdf2(t_lower))
    assert res.p_outside == pytest.approx(min(1.0, 2 * min(res.p_above, res.p_below)))
    # the sign of d does not matter
    swapped = seed_tost(b, a, m)
    assert swapped.p_tost == pytest.approx(res.p_tost) and swapped.mean_diff == pytest.approx(-7 / 30)
    # judged alone (a Holm family of one): the p_holm is p_tost, and it holds
    [v] = judge([equivalent(("a", "b"))], sides_of(a=dict(enumerate(a)), b=dict(enumerate(b))))
    [pv] = v.pairs
    assert v.verdict == "holds" and v.kind == "equivalent" and v.margin == 1.0
    assert pv.p_adjusted == pytest.approx(res.p_tost)
    assert "equivalence test (TOST)" in pv.evidence and "margin ±1" in pv.evidence
    assert "n=3 seeds" in pv.evidence and f"p_tost={res.p_tost:.3g}" in pv.evidence
    assert "Δ=+0.2333" in pv.evidence and pv.evidence.endswith("→ holds")


def test_tost_edge_cases():
    assert seed_tost([1.0], [0.0], 1.0) is None
    with pytest.raises(ValueError, match="margin"):
        seed_tost([1.0, 2.0], [0.0, 0.5], 0.0)
    exact = seed_tost([51.0, 52.0, 50.0], [50.5, 51.5, 49.5], 1.0)  # equal difference 0.5
    assert exact.exact and exact.p_tost is None and exact.p_outside is None
    assert exact.mean_diff == pytest.approx(0.5)


def test_verdicts_within_apart_and_noisy():
    sides = sides_of(
        a={0: 51.0, 1: 51.2, 2: 50.9, 3: 51.1, 4: 51.0},
        near={0: 50.9, 1: 51.3, 2: 50.8, 3: 51.0, 4: 51.1},  # within 0.1 of a, small spread
        noisy={0: 47.0, 1: 55.5, 2: 49.0, 3: 54.0, 4: 50.0},  # mean close to a, large spread
        far={0: 47.1, 1: 47.0, 2: 46.8, 3: 47.3, 4: 47.2},  # about 4 points below, margin 1
    )
    [v] = judge([equivalent(("a", "near"))], sides)
    assert v.verdict == "holds" and v.pairs[0].p_adjusted < 0.05
    [v] = judge([equivalent(("a", "noisy"))], sides)
    assert v.verdict == "not significant"
    assert "p_tost=" in v.pairs[0].evidence and v.pairs[0].evidence.endswith("→ not significant")
    for pair in (("a", "far"), ("far", "a")):  # unordered: contradicted both ways round
        [v] = judge([equivalent(pair)], sides)
        pv = v.pairs[0]
        assert v.verdict == "contradicted" and pv.tost.p_tost > 0.5
        assert pv.p_adjusted == pytest.approx(pv.tost.p_outside) and pv.p_adjusted < 0.05
        assert "p_outside=" in pv.evidence
    # a wider margin takes the far pair in
    [v] = judge([equivalent(("a", "far"), margin=6.0)], sides)
    assert v.verdict == "holds"
    # a claim with several pairs: contradicted if one is
    [v] = judge([equivalent(("a", "near"), ("a", "far"))], sides)
    assert v.verdict == "contradicted" and [pv.verdict for pv in v.pairs] == ["holds", "contradicted"]


def test_equivalence_pairs_share_the_tables_holm_family():
    sides = sides_of(
        a={0: 51.0, 1: 51.2, 2: 50.9, 3: 51.1},
        near={0: 50.9, 1: 51.3, 2: 50.8, 3: 51.0},
        worse={0: 48.0, 1: 48.7, 2: 48.1, 3: 48.5},
    )
    directional = ("dir", "a beats worse", "pl_r1", "test", [("a", "worse")])
    v_dir, v_eq = judge([directional, equivalent(("a", "near"))], sides)
    dt = v_dir.pairs[0].seed_test
    p_dir = min(1.0, 2 * min(dt.p_greater, dt.p_less))
    p_eq = v_eq.pairs[0].tost.p_tost
    assert [v_dir.pairs[0].p_adjusted, v_eq.pairs[0].p_adjusted] == pytest.approx(holm([p_dir, p_eq]))
    # a 5-tuple claim is still a directional one
    [alone] = judge([directional], sides)
    assert alone.kind == "better" and alone.margin is None and alone.pairs[0].tost is None
    assert alone.pairs[0].seed_test == seed_test([51.0, 51.2, 50.9, 51.1], [48.0, 48.7, 48.1, 48.5])


def test_deterministic_pairs_and_untested():
    sides = sides_of(
        det={0: 51.05, 1: 51.05, 2: 51.05},
        close={0: 50.69, 1: 50.69, 2: 50.69},
        apart={0: 49.0, 1: 49.0, 2: 49.0},
        shifted={0: 52.0, 1: 53.0, 2: 51.0},  # sides vary, difference to ``shifted2`` does not
        shifted2={0: 51.5, 1: 52.5, 2: 50.5},
        one={0: 51.0},
    )
    [v] = judge([equivalent(("det", "close"))], sides)
    pv = v.pairs[0]
    assert v.verdict == "holds" and pv.deterministic and pv.p_adjusted is None
    assert "p_tost none" in pv.evidence and "|Δ| < margin" in pv.evidence
    [v] = judge([equivalent(("det", "apart"))], sides)
    assert v.verdict == "contradicted" and "|Δ| > margin" in v.pairs[0].evidence
    [v] = judge([equivalent(("det", "apart"), margin=2.05)], sides)  # |Δ| = margin: no decision
    assert v.verdict == "not significant"
    [v] = judge([equivalent(("shifted", "shifted2"))], sides)  # zero spread of the difference
    assert v.verdict == "holds" and v.pairs[0].deterministic
    [v] = judge([equivalent(("shifted", "shifted2"), margin=0.4)], sides)
    assert v.verdict == "contradicted"
    [v] = judge([equivalent(("det", "one"))], sides)
    assert v.verdict == "untested" and "at least 2 are needed" in v.pairs[0].reason
    assert v.pairs[0].evidence.startswith("det vs one: equivalence test (TOST), margin ±1:")
    [v] = judge([equivalent(("det", "missing"))], sides)
    assert v.verdict == "untested" and "no results for 'missing'" in v.pairs[0].reason
    [v] = judge([equivalent(("det", "close"))], sides, unconverged={"close": "still improving"})
    assert v.label == "untested (not converged)"
    with pytest.raises(ValueError, match="margin"):
        judge([equivalent(("det", "close"), margin=None)], sides)


# --- schema ---------------------------------------------------------------------------

ROWS = """
  - {id: a, label: Model A}
  - {id: b, label: Model B, set: {model.linear: true}}
"""
CLAIM = ("claims:\n  - {id: a-matches-b, text: A matches B, where: Sec. 1, metric: i2t_r1, "
         "kind: equivalent, margin: 1.0, pairs: [[a, b]]}\n")


def _write(tmp_path, claims: str = CLAIM):
    path = tmp_path / "eq.yaml"
    path.write_text(tiny_recipe("eq-test", ROWS, extra=claims, seeds="[0, 1, 2]"))
    return path


def test_margin_is_required_for_equivalence_and_forbidden_otherwise(tmp_path):
    with pytest.raises(RecipeError, match="claim 'a-matches-b'.*needs a margin"):
        resolve(_write(tmp_path, CLAIM.replace(", margin: 1.0", "")), profile="smoke")
    with pytest.raises(RecipeError, match="claim 'a-matches-b'.*margin must be a finite number > 0"):
        resolve(_write(tmp_path, CLAIM.replace("margin: 1.0", "margin: -1")), profile="smoke")
    with pytest.raises(RecipeError, match="claim 'a-matches-b'.*margin belongs to an equivalence claim"):
        resolve(_write(tmp_path, CLAIM.replace("kind: equivalent, ", "")), profile="smoke")
    with pytest.raises(RecipeError, match="kind"):
        resolve(_write(tmp_path, CLAIM.replace("kind: equivalent", "kind: similar")), profile="smoke")
    claim = resolve(_write(tmp_path), profile="smoke").recipe.claims[0]
    assert (claim.kind, claim.margin) == ("equivalent", 1.0)


def test_directional_claims_dump_as_before_and_hashes_do_not_see_claims():
    plain = Claim(id="a-beats-b", text="A beats B", pairs=[["a", "b"]])
    for dumped in (plain.model_dump(), plain.model_dump(mode="json")):
        assert set(dumped) == {"id", "text", "metric", "protocol", "pairs", "where"}
    eq = Claim(id="x", text="t", pairs=[["a", "b"]], kind="equivalent", margin=1.0)
    assert eq.model_dump(mode="json")["kind"] == "equivalent" and eq.model_dump()["margin"] == 1.0
    assert Claim(**eq.model_dump()) == eq and Claim(**plain.model_dump()) == plain
    # every recipe's directional claims dump without the new keys
    from xmrbench.recipe.load import recipe_index

    for rid in recipe_index():
        for dumped in load_recipe(rid)[0].model_dump(mode="json")["claims"]:
            if dumped.get("kind") != "equivalent":
                assert "kind" not in dumped and "margin" not in dumped, rid
    # the two-branch table with and without its equivalence claim resolves to the same hashes
    recipe, path = load_recipe("two-branch-table1")
    assert [c.id for c in recipe.claims if c.kind == "equivalent"] == ["similarity-matches-embedding"]
    data = recipe.model_dump()
    data["claims"] = [c for c in data["claims"] if c.get("kind") != "equivalent"]
    without = Recipe(**data)
    for profile in ("quick", "full"):
        full = resolve(recipe, profile=profile, path=path, require_data=False)
        bare = resolve(without, profile=profile, path=path, require_data=False)
        assert full.hash == bare.hash
        assert [c.hash for c in full.cells] == [c.hash for c in bare.cells]


# --- report ---------------------------------------------------------------------------


def test_report_renders_the_equivalence_verdict(tmp_path):
    from xmrbench.store.store import ResultStore

    claims = CLAIM + ("  - {id: a-beats-b, text: A beats B, where: Sec. 1, metric: i2t_r1, pairs: [[a, b]]}\n")
    resolved = resolve(_write(tmp_path, claims), profile="smoke")
    store = ResultStore(tmp_path / "store")
    values = {"a": [51.0, 51.2, 50.9], "b": [50.95, 51.1, 51.0]}
    for cell in resolved.cells:
        for seed, value in enumerate(values[cell.id]):
            store_converged_run(store, resolved, cell, seed, {"i2t_r1": value})
    rep = collect_resolved(resolved, store)
    eq, directional = rep.claims
    assert eq.kind == "equivalent" and eq.verdict == "holds", eq.pairs[0].evidence
    assert directional.kind == "better" and directional.verdict == "not significant"
    text = to_markdown(rep)
    row = next(line for line in text.splitlines() if line.startswith("| A matches B"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "i2t_r1 (test), equivalent within ±1"
    assert cells[2] == "holds"
    assert cells[3].startswith("a vs b: equivalence test (TOST), margin ±1, Δ=") and "n=3 seeds, p_tost=" in cells[3]
    assert TEST_NOTE in text and "equivalence" in TEST_NOTE and "TOST" in TEST_NOTE
