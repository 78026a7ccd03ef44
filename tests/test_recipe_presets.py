"""Row presets (``presets:`` / ``use:``) and ``extends`` appending notes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_recipe import BASE as RECIPE_BASE  # the recipe tests' base: smoke 1 epoch, quick 3

from xmrbench.errors import RecipeError
from xmrbench.recipe.load import load_recipe, recipe_index
from xmrbench.recipe.resolve import resolve, with_axes

BASE = RECIPE_BASE + """
presets:
  small:
    set: {model.hidden_dim: 4, model.embed_dim: 4, train.lr: 0.01}
    profiles:
      smoke: {train.epochs: 2, train.batch_size: 16}
notes:
  - base note
"""

PRESETS = """
presets:
  linear:
    set: {model.linear: true, train.lr: 0.02}
    profiles:
      smoke: {train.epochs: 3}
      quick: {train.epochs: 5}
"""


def write(tmp_path: Path, rows: str, *, extra: str = PRESETS, base: str = BASE, name: str = "r.yaml") -> Path:
    (tmp_path / "_base").mkdir(exist_ok=True)
    (tmp_path / "_base" / "b.yaml").write_text(textwrap.dedent(base))
    body = "id: t-presets\nextends: _base/b.yaml\ntable: Table 9\ntitle: presets\n"
    body += textwrap.dedent(extra) + "rows:\n" + textwrap.indent(textwrap.dedent(rows), "  ")
    body += "notes:\n  - own note\n"
    path = tmp_path / name
    path.write_text(body)
    return path


def cells(path: Path, profile: str = "smoke") -> dict:
    return {c.id: c.config for c in resolve(path, profile=profile).cells}


def test_presets_merge_in_order_and_the_row_wins(tmp_path):
    path = write(tmp_path, """
        - id: plain
          label: no preset
        - id: one
          label: one preset
          use: linear
        - id: two
          label: two presets, the later wins
          use: [small, linear]
        - id: reversed
          label: the same two, the other way round
          use: [linear, small]
        - id: own
          label: its own keys win
          use: [small, linear]
          set: {train.lr: 0.5}
          profiles:
            smoke: {train.epochs: 7}
    """)
    smoke = cells(path)
    assert smoke["plain"].train.epochs == 1 and smoke["plain"].model.params.linear is False
    assert smoke["one"].model.params.linear is True and smoke["one"].train.lr == 0.02
    assert smoke["one"].train.epochs == 3  # the preset's smoke block
    assert smoke["two"].train.lr == 0.02 and smoke["two"].train.epochs == 3  # linear after small
    assert smoke["two"].model.params.hidden_dim == 4 and smoke["two"].train.batch_size == 16
    assert smoke["reversed"].train.lr == 0.01 and smoke["reversed"].train.epochs == 2  # small after linear
    assert smoke["reversed"].model.params.linear is True
    assert smoke["own"].train.lr == 0.5 and smoke["own"].train.epochs == 7
    assert smoke["own"].model.params.hidden_dim == 4 and smoke["own"].train.batch_size == 16
    quick = cells(path, "quick")
    assert quick["one"].train.epochs == 5 and quick["own"].train.epochs == 5  # no quick block of its own
    assert quick["reversed"].train.batch_size == 128  # small has no quick block


def test_a_preset_is_the_same_as_writing_its_block(tmp_path):
    written = write(tmp_path, """
        - id: a
          label: A
          set: {model.hidden_dim: 4, model.embed_dim: 4, train.lr: 0.02, model.linear: true}
          profiles:
            smoke: {train.epochs: 3, train.batch_size: 16}
            quick: {train.epochs: 5}
    """, name="written.yaml")
    used = write(tmp_path, """
        - id: a
          label: A
          use: [small, linear]
    """, name="used.yaml")
    for profile in ("smoke", "quick"):
        assert resolve(written, profile=profile).cells[0].hash == resolve(used, profile=profile).cells[0].hash
    row = load_recipe(used)[0].rows[0]  # the row holds the merged overrides (show, plan, sweeps read them)
    assert row.use == ("small", "linear") and row.set["model.linear"] is True
    assert row.profiles["smoke"] == {"train.epochs": 3, "train.batch_size": 16}


def test_a_later_dotted_key_wins_over_an_earlier_prefix(tmp_path):
    extra = """
    presets:
      no-loss: {set: {loss: null}}
      margin: {set: {loss.margin: 0.3}}
    """
    path = write(tmp_path, """
        - id: a
          label: A
          use: [no-loss, margin]
          set: {loss.name: bidirectional_ranking}
        - id: b
          label: B
          use: [margin]
          set: {model.name: cca, model.dim: 4, loss: null}
    """, extra=extra)
    smoke = cells(path)
    assert smoke["a"].loss.name == "bidirectional_ranking" and smoke["a"].loss.params.margin == 0.3
    assert smoke["b"].loss is None


def test_presets_are_inherited_through_extends(tmp_path):
    extra = """
    presets:
      small:
        profiles:
          smoke: {train.epochs: 9}
    """
    path = write(tmp_path, """
        - id: a
          label: A
          use: small
    """, extra=extra)
    recipe, _ = load_recipe(path)
    assert set(recipe.presets) == {"small"}
    cfg = cells(path)["a"]
    assert cfg.model.params.hidden_dim == 4  # the base's preset
    assert cfg.train.epochs == 9 and cfg.train.batch_size == 16  # merged key by key with the recipe's


def test_unknown_preset_names_file_line_row_and_name(tmp_path):
    path = write(tmp_path, """
        - id: a
          label: A
        - id: b
          label: B
          use: [linear, nope]
    """)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "use: [linear, nope]" in text)
    text = str(err.value)
    assert f"r.yaml:{line}:" in text and "rows[1].use" in text
    assert "row 'b'" in text and "'nope'" in text and "known: linear, small" in text


def test_an_error_inside_a_base_preset_names_the_base(tmp_path):
    base = BASE.replace("      smoke: {train.epochs: 2, train.batch_size: 16}",
                        "      smoke: {train.epochs: 2}\n      smok: {train.epochs: 1}")
    path = write(tmp_path, "- id: a\n  label: A\n  use: small\n", base=base)
    with pytest.raises(RecipeError, match=r"b\.yaml:\d+: presets\.small\.profiles\.smok"):
        load_recipe(path)


@pytest.mark.parametrize("rows, message", [
    ("- id: e\n  label: E\n  use: linear\n  ensemble: [a, b]\n", "uses no preset"),
    ("- id: a\n  label: A\n  use: 3\n", "rows[0].use"),
])
def test_bad_use(tmp_path, rows, message):
    rows = "- id: a\n  label: A\n- id: b\n  label: B\n" + rows if "ensemble" in rows else rows
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write(tmp_path, rows))


def test_bad_preset_name(tmp_path):
    with pytest.raises(RecipeError, match="preset name 'Big'"):
        load_recipe(write(tmp_path, "- id: a\n  label: A\n", extra="presets:\n  Big: {set: {train.lr: 0.1}}\n"))


def test_sweeps_keep_the_presets(tmp_path):
    path = write(tmp_path, """
        - id: a
          label: A
          use: [small, linear]
    """)
    recipe, _ = load_recipe(path)
    swept = resolve(with_axes(recipe, {"train.lr": [0.1, 0.2]}), profile="smoke", path=path)
    assert [c.config.train.lr for c in swept.cells] == [0.1, 0.2]
    assert all(c.config.model.params.linear is True and c.config.train.epochs == 3 for c in swept.cells)


def test_extends_appends_notes_once(tmp_path):
    path = write(tmp_path, "- id: a\n  label: A\n")
    assert load_recipe(path)[0].notes == ("base note", "own note")
    # a base reached twice (two bases that extend it) adds its notes once
    (tmp_path / "_base" / "c.yaml").write_text("extends: b.yaml\nnotes: [c note]\n")
    (tmp_path / "_base" / "d.yaml").write_text("extends: b.yaml\nnotes: [d note]\n")
    text = path.read_text().replace("extends: _base/b.yaml", "extends: [_base/c.yaml, _base/d.yaml]")
    path.write_text(text)
    assert load_recipe(path)[0].notes == ("base note", "c note", "d note", "own note")


def test_committed_recipes_have_no_duplicated_notes_and_use_known_presets():
    for rid, path in recipe_index().items():
        recipe, _ = load_recipe(path)
        assert len(set(recipe.notes)) == len(recipe.notes), rid
        for row in recipe.rows:
            assert set(row.use) <= set(recipe.presets), (rid, row.id)
