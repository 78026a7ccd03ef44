"""Results store: atomic writes, corrupt-file detection, temporaries, schema versions."""

from __future__ import annotations

import json

import pytest

from xmrbench.errors import StoreError
from xmrbench.store.schema import (
    SCHEMA_VERSION,
    CellRef,
    DatasetRef,
    RecipeRef,
    ResultDoc,
    migrate,
)
from xmrbench.store.store import ResultStore, atomic_write_text, safe_name


def make_doc(seed: int = 0, cell: str = "a@lr=0.1", chash: str = "abc123def456") -> ResultDoc:
    return ResultDoc(
        schema_version=SCHEMA_VERSION,
        recipe=RecipeRef(id="r", path="r.yaml", hash="h", paper="two_branch", table="T", profile="smoke"),
        cell=CellRef(id=cell, label="A", row="a", point={"train.lr": 0.1}, hash=chash),
        seed=seed,
        config={"train": {"lr": 0.1}},
        dataset=DatasetRef(name="synthetic-tiny", fingerprint="f" * 16),
        protocols={"test": {"dataset": "synthetic-tiny"}},
        metrics={"test": {"rsum": 100.0}},
        created="2026-01-01T00:00:00+00:00",
    )


def test_write_read_roundtrip_and_status(tmp_path):
    store = ResultStore(tmp_path)
    doc = make_doc()
    path = store.write(doc)
    assert path.name == "a_lr_0.1--abc123def456--seed0.json"
    assert store.read(path) == doc
    st = store.status("r", "a@lr=0.1", "abc123def456", 0)
    assert st.state == "done" and st.doc == doc
    assert store.status("r", "a@lr=0.1", "abc123def456", 1).state == "missing"
    assert store.recipe_ids() == ["r"]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "content",
    ['{"schema_version": 1, "recipe"', "[]", "", '{"schema_version": 99}', '{"schema_version": 1}', "\x00\x01"],
)
def test_corrupt_or_partial_files_are_reported(tmp_path, content):
    store = ResultStore(tmp_path)
    path = store.result_path("r", "a", "abc123def456", 0)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    st = store.status("r", "a", "abc123def456", 0)
    assert st.state == "corrupt" and st.problem
    with pytest.raises(StoreError) as info:
        store.read(path)
    assert str(path) in info.value.one_line()
    assert [problem for _, doc, problem in store.iter_results("r") if doc is None]


def test_file_of_another_cell_is_not_used(tmp_path):
    store = ResultStore(tmp_path)
    doc = make_doc(chash="abc123def456")
    path = store.write(doc)
    other = store.result_path("r", "a@lr=0.1", "ffffffffffff", 0)
    other.write_text(path.read_text())
    assert store.status("r", "a@lr=0.1", "ffffffffffff", 0).state == "corrupt"


def test_temporaries_of_killed_writers_are_cleaned(tmp_path):
    store = ResultStore(tmp_path)
    store.write(make_doc())
    junk = store.recipe_dir("r") / ".a--abc--seed0.json.4242.tmp"
    junk.write_text("{")
    assert store.clean_temporaries("r") == [junk]
    assert not junk.exists()
    assert [p.name for p, d, _ in store.iter_results("r") if d is not None]


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_write_failure_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write_text(blocker / "sub" / "x.json", "data")


def test_migrate_rejects_future_and_missing_versions():
    with pytest.raises(ValueError, match="newer"):
        migrate({"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="schema_version"):
        migrate({})
    assert migrate({"schema_version": SCHEMA_VERSION}) == {"schema_version": SCHEMA_VERSION}


def test_nan_metrics_are_never_written(tmp_path):
    doc = make_doc()
    bad = doc.model_copy(update={"metrics": {"test": {"rsum": float("nan")}}})
    with pytest.raises(ValueError):
        ResultStore(tmp_path).write(bad)
    assert not list(tmp_path.rglob("*.json"))


def test_safe_name():
    assert safe_name("a@lr=0.1,b=2") == "a_lr_0.1_b_2"
    assert json.loads(json.dumps(safe_name("x/y")))  # no path separators
    assert "/" not in safe_name("x/y")
