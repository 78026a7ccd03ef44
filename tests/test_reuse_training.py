"""A cell whose config differs from a stored run's only in what it reports (its
protocols) evaluates that run's model instead of training again, and gets the numbers
training it would give."""

from __future__ import annotations

import os

import pytest

from xmrbench.cli.json_out import plan_payload
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.adopt import trained_ref_path, training_hash
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

from support import tiny_recipe

ROWS = """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
"""
TEST_ONLY = "protocols:\n  test: {dataset: synthetic, images: 100}\n"
DEV_AND_TEST = "protocols:\n  dev: {dataset: synthetic, images: 100}\n  test: {dataset: synthetic, images: 100}\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipes(tmp_path):
    first = tmp_path / "tiny-reports-test.yaml"
    first.write_text(tiny_recipe("tiny-reports-test", ROWS, seeds="[0, 1]", epochs=2))
    second = tmp_path / "tiny-reports-dev.yaml"
    second.write_text(tiny_recipe("tiny-reports-dev", ROWS, seeds="[0, 1]", epochs=2).replace(TEST_ONLY, DEV_AND_TEST))
    return resolve(first, profile="smoke"), resolve(second, profile="smoke")


def test_the_second_table_evaluates_the_first_tables_models(tmp_path):
    first, second = _recipes(tmp_path)
    for row in ("a", "b"):
        one, two = first.cell(row), second.cell(row)
        assert one.hash != two.hash  # other protocols: another cell, another result
        assert training_hash(one.config.to_dict()) == training_hash(two.config.to_dict())
    store = ResultStore(tmp_path / "s")
    assert not reproduce(first, store, device="cpu").reused_training
    planned = plan_payload(second, store, store.root)["runs"]
    assert [r["trained_by"] for r in planned] == [
        f"{first.id}/{store.run_name(r['cell'], first.cell(r['cell']).hash, r['seed'])}" for r in planned]
    assert all(r["estimate_s"] is not None for r in planned)  # the source's evaluation time
    assert all(r["trained_by_epochs"] is None for r in planned)  # the same budget
    summary = reproduce(second, store, device="cpu")
    assert not summary.failed
    assert sorted(summary.reused_training) == sorted(summary.ran) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]

    trained = ResultStore(tmp_path / "trained")  # the second table trained on its own: the reference numbers
    assert not reproduce(second, trained, device="cpu").reused_training
    for row in ("a", "b"):
        one, two = first.cell(row), second.cell(row)
        for seed in (0, 1):
            src = store.status(first.id, row, one.hash, seed).doc
            doc = store.status(second.id, row, two.hash, seed).doc
            own = trained.status(second.id, row, two.hash, seed).doc
            assert doc.trained_by == f"{first.id}/{store.run_name(row, one.hash, seed)}" and own.trained_by is None
            assert doc.metrics["test"] == src.metrics["test"] and doc.ranks["test"] == src.ranks["test"]
            assert doc.metrics == own.metrics and doc.ranks == own.ranks  # "dev" too: the whole split and selection
            untimed = {k: v for k, v in own.curves.items() if k != "epoch_s"}  # wall-clock times differ
            assert {k: v for k, v in doc.curves.items() if k != "epoch_s"} == untimed
            assert doc.curves == src.curves and doc.best_epoch == own.best_epoch
            assert doc.convergence == own.convergence
            assert doc.timing["train_s"] == src.timing["train_s"]


def test_force_trains_and_a_stale_reference_is_ignored(tmp_path):
    first, second = _recipes(tmp_path)
    forced_store = ResultStore(tmp_path / "forced")
    reproduce(first.restricted_to_rows(["a"]), forced_store, device="cpu")
    forced = reproduce(second.restricted_to_rows(["a"]), forced_store, device="cpu", force=True)
    assert sorted(forced.ran) == [("a", 0), ("a", 1)] and not forced.reused_training

    store = ResultStore(tmp_path / "s")
    reproduce(first.restricted_to_rows(["a"]), store, device="cpu")
    cell = first.cell("a")
    assert trained_ref_path(store, training_hash(cell.config.to_dict()), 0).is_file()
    store.model_path(first.id, "a", cell.hash, 0).unlink()  # seed 0's model is gone: its reference is stale
    summary = reproduce(second.restricted_to_rows(["a"]), store, device="cpu")
    assert sorted(summary.ran) == [("a", 0), ("a", 1)] and summary.reused_training == [("a", 1)]


def test_training_hash_ignores_only_what_is_reported(tmp_path):
    first, _ = _recipes(tmp_path)
    config = first.cell("a").config.to_dict()
    base = training_hash(config)
    for key, value in (("protocols", ["dev"]), ("sentence_retrieval", True), ("store_ranks", False)):
        assert training_hash({**config, "eval": {**config["eval"], key: value}}) == base
    assert training_hash({**config, "eval": {**config["eval"], "dev_images": 7}}) != base
    assert training_hash({**config, "train": {**config["train"], "lr": 0.5}}) != base
    assert training_hash({**config, "needs": {"init": "x"}}) != base


def test_a_store_from_before_the_references_is_indexed_once(tmp_path):
    import shutil

    first, second = _recipes(tmp_path)
    store = ResultStore(tmp_path / "s")
    reproduce(first.restricted_to_rows(["a"]), store, device="cpu")
    shutil.rmtree(store.root / "_trained")  # as a store written before training references
    summary = reproduce(second.restricted_to_rows(["a"]), store, device="cpu")
    assert summary.reused_training == [("a", 0), ("a", 1)]
    assert sorted(p.name for p in (store.root / "_trained").iterdir()) == sorted(
        trained_ref_path(store, training_hash(first.cell("a").config.to_dict()), s).name for s in (0, 1))


def test_a_changed_file_that_the_config_names_stops_the_reuse(tmp_path):
    from xmrbench.runner.adopt import file_stamps

    first, second = _recipes(tmp_path)
    lists = tmp_path / "lists.npy"
    lists.write_bytes(b"1234")
    config = {"method": {"candidate_files": [str(lists), "not/a/file.npy"]}, "train": {"lr": 0.1}, "eval": {}}
    stamps = file_stamps(config)
    assert list(stamps) == [str(lists)] and stamps[str(lists)][0] == 4
    store = ResultStore(tmp_path / "s")
    reproduce(first.restricted_to_rows(["a"]), store, device="cpu")
    cell = first.cell("a")
    ref = trained_ref_path(store, training_hash(cell.config.to_dict()), 0)
    stored = ref.read_text()
    ref.write_text(stored.replace('"files": {}', f'"files": {{"{lists}": [3, 0]}}'))  # a file named then, changed now
    summary = reproduce(second.restricted_to_rows(["a"]), store, device="cpu", force=False)
    assert summary.reused_training == [("a", 1)]  # seed 0's reference no longer matches its files


def test_a_kill_while_a_reference_is_written_is_repaired_by_the_next_reproduce(tmp_path):
    """A run stored, then killed while writing its training reference: a temporary and no
    reference. The next reproduce removes the dead writer's temporary (a live writer's
    stays) and writes the reference, so the second table evaluates the model again."""
    import subprocess
    import sys

    first, second = _recipes(tmp_path)
    store = ResultStore(tmp_path / "s")
    assert not reproduce(first, store, device="cpu").failed
    ref = trained_ref_path(store, training_hash(first.cell("a").config.to_dict()), 0)
    text = ref.read_text()
    ref.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tmp = ref.with_name(f".{ref.name}.{int(dead.stdout)}.tmp")
    live_tmp = ref.with_name(f".other.ref.{os.getpid()}.tmp")
    dead_tmp.write_text(text[:10])
    live_tmp.write_text("")
    summary = reproduce(first, store, device="cpu")
    assert not summary.ran and not summary.failed
    assert not dead_tmp.exists() and live_tmp.exists()
    assert ref.read_text() == text
    assert sorted(reproduce(second, store, device="cpu").reused_training) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
