"""Twin cells: two rows with the same content hash (a row the paper prints twice) are
trained once; the second gets a copy of the run, with its own cell reference."""

from __future__ import annotations

import pytest

from xmrbench.recipe.resolve import resolve
from xmrbench.runner.adopt import twins
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

from support import tiny_recipe

RECIPE = tiny_recipe(
    "tiny-twins",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: a-again, label: A printed again}
  - {id: ab, label: A+B, ensemble: [a-again, b]}
""",
    title="twins",
    seeds="[0, 1]",
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_twin_row_is_trained_once_and_copied(tmp_path):
    path = tmp_path / "tiny-twins.yaml"
    path.write_text(RECIPE)
    resolved = resolve(path, profile="smoke")
    assert {k: v.id for k, v in twins(resolved).items()} == {"a-again": "a"}
    store = ResultStore(tmp_path / "s")
    summary = reproduce(resolved, store, device="cpu")
    assert not summary.failed
    assert sorted(summary.ran) == [("a", 0), ("a", 1), ("ab", 0), ("ab", 1), ("b", 0), ("b", 1)]
    assert sorted(summary.adopted) == [("a-again", 0), ("a-again", 1)]
    a, twin = resolved.cell("a"), resolved.cell("a-again")
    for seed in (0, 1):
        src = store.status(resolved.id, "a", a.hash, seed).doc
        doc = store.status(resolved.id, "a-again", twin.hash, seed).doc
        assert doc.cell.id == "a-again" and doc.cell.label == "A printed again" and doc.metrics == src.metrics
        assert store.model_path(resolved.id, "a-again", twin.hash, seed).read_bytes() == \
            store.model_path(resolved.id, "a", a.hash, seed).read_bytes()
    again = reproduce(resolved, store, device="cpu")
    assert not again.ran and not again.adopted and len(again.skipped) == 8


def test_a_twin_selected_alone_copies_a_stored_source_or_trains_itself(tmp_path):
    path = tmp_path / "tiny-twins.yaml"
    path.write_text(RECIPE)
    resolved = resolve(path, profile="smoke", seeds=[0])
    alone = resolved.restricted_to_rows(["a-again"])
    trained = reproduce(alone, ResultStore(tmp_path / "fresh"), device="cpu")
    assert trained.ran == [("a-again", 0)] and not trained.adopted  # its source is neither stored nor selected
    store = ResultStore(tmp_path / "s")
    reproduce(resolved.restricted_to_rows(["a"]), store, device="cpu")
    copied = reproduce(alone, store, device="cpu")
    assert not copied.ran and copied.adopted == [("a-again", 0)]
