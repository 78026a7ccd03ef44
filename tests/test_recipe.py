"""Recipes: loading with extends, validation errors with file:line and key, resolution, lint."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from xmrbench.errors import ConfigError, RecipeError, UsageError
from xmrbench.recipe.lint import lint_values
from xmrbench.recipe.load import load_recipe, recipe_index
from xmrbench.recipe.resolve import (
    merge_layers,
    parse_set,
    resolve,
    resolve_param,
    with_axes,
)

BASE = """
paper: two_branch
columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, rsum]
protocols:
  test: {dataset: flickr30k, images: 1000}
config:
  model: {name: two_branch_embedding, hidden_dim: 16, embed_dim: 8}
  loss: {name: bidirectional_ranking, top_k: 5}
profiles:
  smoke: {seeds: [0, 1], config: {data: {size: tiny}, train: {epochs: 1}}}
  quick: {seeds: [0], config: {train: {epochs: 3}}}
"""

RECIPE = """
id: t-recipe
extends: _base/b.yaml
table: Table 9
title: test recipe
rows:
  - id: a
    label: A
    paper: {test: [10.0, 20.0, 30.0, 10.0, 20.0, 30.0, 120.0]}
  - id: b
    label: B
    set: {model.linear: true}
  - id: c
    label: C (paper only)
    run: false
    pending: not implemented
    paper: {test: [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 12.0]}
claims:
  - {id: a-beats-b, text: A beats B, pairs: [[a, b]]}
"""


def write(tmp_path: Path, body: str, base: str = BASE, name: str = "r.yaml") -> Path:
    (tmp_path / "_base").mkdir(exist_ok=True)
    (tmp_path / "_base" / "b.yaml").write_text(textwrap.dedent(base))
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_committed_recipes_resolve_in_every_profile():
    index = recipe_index()
    assert {"two-branch-table2", "two-branch-table3", "vsepp-flickr30k"} <= set(index)
    for rid, path in index.items():
        recipe, _ = load_recipe(path)
        for profile in recipe.profiles:
            resolved = resolve(path, profile=profile, require_data=False)
            assert resolved.cells, rid
            for cell in resolved.runnable_cells():
                assert cell.config is not None and len(cell.hash) == 12


def test_committed_recipes_paper_numbers_pass_lint():
    for rid, path in recipe_index().items():
        assert resolve(path, profile="smoke").warnings == [], rid


def test_extends_merges_base(tmp_path):
    recipe, _ = load_recipe(write(tmp_path, RECIPE))
    assert recipe.paper == "two_branch" and recipe.table == "Table 9"
    assert recipe.config["model"]["hidden_dim"] == 16


def test_resolution_merge_order_and_cells(tmp_path):
    path = write(tmp_path, RECIPE)
    resolved = resolve(path, profile="smoke", overrides={"train.lr": 0.5})
    a, b, c = resolved.cells
    assert a.runnable and b.runnable and not c.runnable
    assert a.config.data.size == "tiny" and a.config.train.epochs == 1  # profile
    assert a.config.train.lr == 0.5  # --set wins
    assert b.config.model.params.linear is True and a.config.model.params.linear is False  # row
    assert a.paper["test"]["rsum"] == 120.0
    assert resolved.seeds == (0, 1)
    assert resolve(path, profile="smoke", seeds=[3]).seeds == (3,)
    assert a.config.eval.protocols == ("test",)  # defaults to the recipe's protocols


def test_cell_hash_is_stable_and_content_addressed(tmp_path):
    path = write(tmp_path, RECIPE)
    h1 = resolve(path, profile="smoke").cells[0].hash
    assert h1 == resolve(path, profile="smoke").cells[0].hash
    assert h1 != resolve(path, profile="smoke", overrides={"train.lr": 0.5}).cells[0].hash
    # a change to paper numbers or labels does not change what runs
    path2 = write(tmp_path, RECIPE.replace("label: A", "label: A renamed"), name="r2.yaml")
    assert resolve(path2, profile="smoke").cells[0].hash == h1


def test_grid_and_zip_make_cells(tmp_path):
    body = RECIPE + "grid:\n  loss.margin: [0.1, 0.2]\nzip:\n  train.lr: [0.1, 0.01]\n  train.epochs: [1, 2]\n"
    body = body.replace("claims:\n  - {id: a-beats-b, text: A beats B, pairs: [[a, b]]}\n", "")
    resolved = resolve(write(tmp_path, body), profile="smoke")
    runnable = resolved.runnable_cells()
    assert len(runnable) == 2 * 2 * 2
    ids = {c.id for c in runnable}
    assert "a@lr=0.1,epochs=1,margin=0.2" in ids
    cell = resolved.cell("a@lr=0.01,epochs=2,margin=0.1")
    assert cell.config.train.lr == 0.01 and cell.config.train.epochs == 2 and cell.config.loss.params.margin == 0.1


def test_component_switch_drops_foreign_params():
    merged = merge_layers(
        [
            {"model": {"name": "two_branch_embedding", "hidden_dim": 8}, "loss": {"name": "bidirectional_ranking", "top_k": 3}},
            {"loss": {"name": "logistic"}},
        ]
    )
    assert merged["loss"] == {"name": "logistic"}
    assert merged["model"]["hidden_dim"] == 8


@pytest.mark.parametrize(
    ("mutation", "key", "fragment"),
    [
        (("label: B", "label: B\n    sett: {}"), "rows[1].sett", "unknown key"),
        (("title: test recipe", "title: 3"), "title", "string"),
        (("table: Table 9", "table: Table 9\ncolums: [rsum]"), "colums", "unknown key"),
        (("pairs: [[a, b]]}", "pairs: [[a, b]], metric: recall}"), "claims[0].metric", "unknown metric"),
        (("[10.0, 20.0, 30.0, 10.0, 20.0, 30.0, 120.0]", "[10.0, 20.0]"), "", "2 values for 7 columns"),
    ],
)
def test_schema_errors_name_file_line_and_key(tmp_path, mutation, key, fragment):
    path = write(tmp_path, RECIPE.replace(*mutation))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = info.value.one_line()
    assert "r.yaml:" in msg and fragment in msg and key in msg
    assert "\n" not in msg


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, RECIPE.replace("label: A", "label: [A"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "YAML syntax error" in info.value.one_line() and "r.yaml:" in info.value.one_line()


def test_missing_base_and_missing_file(tmp_path):
    path = write(tmp_path, RECIPE.replace("_base/b.yaml", "_base/nope.yaml"))
    with pytest.raises(RecipeError, match="nope.yaml"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="unknown recipe"):
        load_recipe("no-such-recipe")


def test_config_errors_are_checked_before_work(tmp_path):
    path = write(tmp_path, RECIPE)
    with pytest.raises(ConfigError, match=r"train\.lr.*valid number"):
        resolve(path, profile="smoke", overrides=parse_set(["train.lr=abc"]))
    with pytest.raises(ConfigError, match=r"model\.hiden_dim: unknown key"):
        resolve(path, profile="smoke", overrides=parse_set(["model.hiden_dim=3"]))
    with pytest.raises(ConfigError, match=r"train\.epochs.*integer"):
        resolve(path, profile="smoke", overrides=parse_set(["train.epochs=1.5"]))
    with pytest.raises(ConfigError, match=r"loss\.name.*unknown loss"):
        resolve(path, profile="smoke", overrides=parse_set(["loss.name=nope"]))
    with pytest.raises(ConfigError, match=r"eval\.protocols.*unknown protocol"):
        resolve(path, profile="smoke", overrides={"eval.protocols": ["nope"]})
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_set(["train.lr"])
    with pytest.raises(RecipeError, match="profile 'full' is not defined"):
        resolve(path, profile="full")


def test_claims_must_name_cells(tmp_path):
    path = write(tmp_path, RECIPE.replace("pairs: [[a, b]]", "pairs: [[a, zz]]"))
    with pytest.raises(RecipeError, match="no cell 'zz'"):
        resolve(path, profile="smoke")


def test_claims_and_figures_read_only_protocols_their_cells_evaluate(tmp_path):
    narrowed = RECIPE.replace("set: {model.linear: true}", "set: {model.linear: true, eval.protocols: [dev]}")
    with pytest.raises(RecipeError, match=r"claims\.a-beats-b: cell 'b' does not evaluate protocol 'test'"):
        resolve(write(tmp_path, narrowed), profile="smoke")
    # only in one profile: the other profiles still resolve
    per_profile = RECIPE.replace("set: {model.linear: true}",
                                 "set: {model.linear: true}\n    profiles: {quick: {eval.protocols: [dev]}}")
    path = write(tmp_path, per_profile)
    assert resolve(path, profile="smoke").cells
    with pytest.raises(RecipeError, match="does not evaluate protocol 'test'"):
        resolve(path, profile="quick")


def test_parse_set_types():
    assert parse_set(["a.b=0.1", "c=true", "d=[1, 2]", "e=null", "f=text"]) == {
        "a.b": 0.1, "c": True, "d": [1, 2], "e": None, "f": "text",
    }


def test_sweep_param_resolution_and_axes(tmp_path):
    path = write(tmp_path, RECIPE)
    resolved = resolve(path, profile="smoke")
    from xmrbench.recipe.resolve import config_keys

    keys = config_keys(resolved)
    assert resolve_param("margin", keys) == "loss.margin"
    assert resolve_param("loss.margin", keys) == "loss.margin"
    with pytest.raises(UsageError, match="no config key"):
        resolve_param("nothing", keys)
    with pytest.raises(UsageError, match="ambiguous"):
        resolve_param("embed_dim", keys + ["other.embed_dim"])
    derived = with_axes(resolved.recipe, {"loss.margin": [0.1, 0.3]}, rows=["a"])
    sweep = resolve(derived, profile="smoke")
    assert [c.id for c in sweep.cells] == ["a@margin=0.1", "a@margin=0.3"]


def test_lint_finds_inconsistent_paper_numbers():
    good = {"i2t_r1": 33.5, "i2t_r5": 61.7, "i2t_r10": 73.6, "t2i_r1": 21.0, "t2i_r5": 47.4, "t2i_r10": 60.5}
    assert lint_values("x", good) == []
    assert lint_values("x", {**good, "rsum": 297.7}) == []
    assert lint_values("x", {**good, "rsum": 297.8}) == []  # within rounding of 7 printed values
    problems = lint_values("x", {**good, "rsum": 299.0})
    assert len(problems) == 1 and "rsum" in problems[0]
    problems = lint_values("x", {**good, "i2t_r5": 80.0})
    assert any("i2t_r5 = 80.0 > i2t_r10 = 73.6" in p for p in problems)
    assert lint_values("x", {"i2t_map": 0.456, "t2i_map": 0.470, "avg_map": 0.458})  # ACMR Table 3 Bimodal-AE
    assert lint_values("x", {"i2t_map": 0.366, "t2i_map": 0.277, "avg_map": 0.322}) == []
    assert lint_values("x", {"i2t_r1": None, "i2t_r5": 50.0}) == []


def test_lint_warning_names_recipe_table_and_cell(tmp_path):
    path = write(tmp_path, RECIPE.replace("120.0]", "121.0]"))
    warnings = resolve(path, profile="smoke").warnings
    assert len(warnings) == 1
    assert "t-recipe (Table 9), cell 'a', test" in warnings[0]


def test_ensemble_rows_resolve_after_their_members(tmp_path):
    body = RECIPE.replace(
        "  - id: c\n", "  - id: ens\n    label: A+B\n    ensemble: [a, b]\n  - id: c\n"
    )
    resolved = resolve(write(tmp_path, body), profile="smoke")
    ens = resolved.cell("ens")
    assert [m.id for m in ens.members] == ["a", "b"] and ens.runnable
    assert ens.hash not in (resolved.cell("a").hash, resolved.cell("b").hash)
    assert [c.id for c in resolved.cells] == ["a", "b", "ens", "c"]
    bad = RECIPE.replace("  - id: c\n", "  - id: ens\n    label: x\n    ensemble: [a, c]\n  - id: c\n")
    with pytest.raises(RecipeError, match="not a runnable, non-ensemble row"):
        load_recipe(write(tmp_path, bad, name="bad.yaml"))


def test_a_declared_inconsistency_is_acknowledged_not_warned(tmp_path):
    base = tmp_path / "r.yaml"
    text = """
id: inconsistent-demo
paper: two_branch
table: Table X
title: demo
columns: [i2t_map, t2i_map, avg_map]
protocols: {test: {dataset: wikipedia, split: test}}
config: {model: {name: two_branch_embedding, hidden_dim: 16, embed_dim: 8}, loss: {name: bidirectional_ranking}}
profiles: {smoke: {seeds: [0], config: {data: {size: tiny}, train: {epochs: 1}}}}
rows:
  - id: a
    label: A
    run: false
    pending: "printed only"
    paper: {test: [0.619, 0.489, 0.546]}
    INCONSISTENT
"""
    base.write_text(text.replace("INCONSISTENT", 'inconsistent: {avg_map: "printed so"}'))
    resolved = resolve(base, profile="smoke")
    assert resolved.warnings == []
    assert len(resolved.acknowledged) == 1 and "printed so" in resolved.acknowledged[0]
    base.write_text(text.replace("INCONSISTENT", ""))
    assert "avg_map = 0.546" in resolve(base, profile="smoke").warnings[0]
    stale = text.replace("0.546", "0.554").replace("INCONSISTENT", 'inconsistent: {avg_map: "printed so"}')
    base.write_text(stale)
    assert "consistent" in resolve(base, profile="smoke").warnings[0]


def _grid(tmp_path: Path, extra: str) -> Path:
    body = RECIPE + "grid:\n  loss.margin: [0.1, 0.2]\n" + textwrap.dedent(extra)
    return write(tmp_path, body.replace("claims:\n  - {id: a-beats-b, text: A beats B, pairs: [[a, b]]}\n", ""))


def test_a_grid_point_can_have_its_own_budget(tmp_path):
    path = _grid(tmp_path, """
        cell_profiles:
          "a@margin=0.1": {smoke: {train.epochs: 7, loss.margin: 0.9}, quick: {train.epochs: 9}}
        """)
    smoke = resolve(path, profile="smoke")
    own, other = smoke.cell("a@margin=0.1").config, smoke.cell("a@margin=0.2").config
    assert own.train.epochs == 7 and other.train.epochs == 1 and smoke.cell("b@margin=0.1").config.train.epochs == 1
    assert own.loss.params.margin == 0.1  # the grid point always wins
    assert resolve(path, profile="quick").cell("a@margin=0.1").config.train.epochs == 9
    with pytest.raises(RecipeError, match="cell_profiles: no cell 'a@margin=0.3'"):
        resolve(_grid(tmp_path, 'cell_profiles: {"a@margin=0.3": {smoke: {train.epochs: 2}}}\n'), profile="smoke")


@pytest.mark.parametrize(("extra", "fragment"), [
    ('near_chance: {zz: "why"}\n', "near_chance: no row or cell 'zz'"),
    ('not_gated: {"a@margin=0.5": "why"}\n', "not_gated: no row or cell 'a@margin=0.5'"),
    ('near_chance: {a: "  "}\n', "near_chance.a: give the paper's reason"),
    ('not_gated: {b: ""}\n', "not_gated.b: give the measured reason"),
    ('near_chance: {a: "fails"}\nnot_gated: {"a@margin=0.2": "spread"}\n', "declared both near_chance and not_gated"),
    ('not_gated: {b: {testal: "spread"}}\n', "not_gated.b: unknown protocol 'testal'"),
    ('not_gated: {b: {test: " "}}\n', "not_gated.b.test: give the measured reason"),
    ('not_gated: {b: {}}\n', "not_gated.b: name the protocols and give the measured reason for each"),
])
def test_gate_declarations_are_validated(tmp_path, extra, fragment):
    with pytest.raises(RecipeError) as info:
        resolve(_grid(tmp_path, extra), profile="smoke")
    assert fragment in info.value.one_line()


def test_gate_declarations_apply_to_a_row_or_one_cell(tmp_path):
    resolved = resolve(_grid(tmp_path, 'near_chance: {b: "fails"}\nnot_gated: {"a@margin=0.1": "spreads"}\n'),
                       profile="smoke")
    assert [resolved.near_chance(c) for c in resolved.runnable_cells()] == [None, None, "fails", "fails"]
    assert [resolved.not_gated(c) for c in resolved.runnable_cells()] == ["spreads", None, None, None]


def test_a_gate_declaration_can_name_protocols_only(tmp_path):
    resolved = resolve(_grid(tmp_path, 'near_chance: {b: "fails"}\nnot_gated: {a: {test: "spreads there"}, b: {test: "x"}}\n'),
                       profile="smoke")
    cells = resolved.runnable_cells()
    assert [resolved.not_gated(c) for c in cells] == [None] * 4  # the cells stay gated
    assert [resolved.not_gated_protocols(c) for c in cells] == [{"test": "spreads there"}] * 2 + [{"test": "x"}] * 2
    whole = resolve(_grid(tmp_path, 'not_gated: {a: "spreads"}\n'), profile="smoke")
    assert [whole.not_gated_protocols(c) for c in whole.runnable_cells()] == [{}] * 4
