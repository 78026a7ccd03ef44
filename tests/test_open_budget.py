"""A run that stopped early at its plateau is the run of any larger epoch budget, so a
cell that differs from it only in ``train.epochs`` evaluates its model instead of
training again, when nothing reads the budget itself; the numbers are those training the
cell would give."""

from __future__ import annotations

import pytest

from xmrbench.cli.json_out import plan_payload
from xmrbench.engine.methods import METHODS
from xmrbench.engine.training_method import Progress
from xmrbench.errors import TrainingError
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.adopt import open_budget_hash, open_ref_path, training_hash
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore

from support import tiny_recipe

ROWS = "  - {id: a, label: A}\n"
# a plateau gain no run reaches: every run stops once it has window + 1 = 2 epochs
STOPS_AT_2 = ", early_stop: true, plateau_window: 1, plateau_gain: 10.0"

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(tmp_path, name: str, epochs: int, extra: str = STOPS_AT_2):
    path = tmp_path / f"{name}.yaml"
    path.write_text(tiny_recipe(name, ROWS, seeds="[0, 1]", epochs=epochs, train_extra=extra))
    return resolve(path, profile="smoke")


def _untimed(curves):
    return {k: v for k, v in curves.items() if k != "epoch_s"}


def test_a_larger_budget_evaluates_the_run_that_stopped_early(tmp_path):
    small, large = _recipe(tmp_path, "budget-six", 6), _recipe(tmp_path, "budget-nine", 9)
    one, two = small.cell("a"), large.cell("a")
    assert training_hash(one.config.to_dict()) != training_hash(two.config.to_dict())
    assert open_budget_hash(one.config.to_dict()) == open_budget_hash(two.config.to_dict()) is not None
    store = ResultStore(tmp_path / "s")
    assert not reproduce(small, store, device="cpu").failed
    for seed in (0, 1):
        record = store.status(small.id, "a", one.hash, seed).doc.convergence
        assert record["stopped_early"] and record["epochs"] == 2
        assert open_ref_path(store, one.config.to_dict(), seed).is_file()
    planned = plan_payload(large, store, store.root)["runs"]
    assert [(r["trained_by"], r["trained_by_epochs"]) for r in planned] == [
        (f"{small.id}/{store.run_name('a', one.hash, r['seed'])}", 2) for r in planned]
    summary = reproduce(large, store, device="cpu")
    assert sorted(summary.reused_training) == sorted(summary.ran) == [("a", 0), ("a", 1)]

    own = ResultStore(tmp_path / "own")  # the larger budget trained on its own: the reference numbers
    assert not reproduce(large, own, device="cpu").reused_training
    for seed in (0, 1):
        doc = store.status(large.id, "a", two.hash, seed).doc
        ref = own.status(large.id, "a", two.hash, seed).doc
        assert doc.trained_by == f"{small.id}/{store.run_name('a', one.hash, seed)}"
        assert doc.config["train"]["epochs"] == 9
        assert doc.metrics == ref.metrics and doc.ranks == ref.ranks and doc.best_epoch == ref.best_epoch
        assert _untimed(doc.curves) == _untimed(ref.curves)
        assert doc.convergence == ref.convergence and doc.convergence["stopped_early"]


def test_a_run_cut_short_by_its_budget_trains_again(tmp_path):
    """Stopping at the budget is not stopping at the plateau: the run of budget 2 trained
    2 epochs (where budget 6 stops too), but nothing says it would have stopped there."""
    store = ResultStore(tmp_path / "s")
    two = _recipe(tmp_path, "budget-two", 2)
    reproduce(two, store, device="cpu")
    assert not store.status(two.id, "a", two.cell("a").hash, 0).doc.convergence["stopped_early"]
    assert not open_ref_path(store, two.cell("a").config.to_dict(), 0).exists()
    summary = reproduce(_recipe(tmp_path, "budget-six", 6), store, device="cpu")
    assert sorted(summary.ran) == [("a", 0), ("a", 1)] and not summary.reused_training


def test_a_budget_at_or_below_the_stopping_epoch_trains(tmp_path):
    store = ResultStore(tmp_path / "s")
    reproduce(_recipe(tmp_path, "budget-six", 6), store, device="cpu")
    summary = reproduce(_recipe(tmp_path, "budget-two", 2), store, device="cpu")
    assert sorted(summary.ran) == [("a", 0), ("a", 1)] and not summary.reused_training


def test_without_early_stopping_the_budget_is_part_of_the_training(tmp_path):
    store = ResultStore(tmp_path / "s")
    no_stop = STOPS_AT_2.replace("early_stop: true", "early_stop: false")
    reproduce(_recipe(tmp_path, "budget-six", 6, no_stop), store, device="cpu")
    summary = reproduce(_recipe(tmp_path, "budget-nine", 9, no_stop), store, device="cpu")
    assert not summary.reused_training


def test_a_store_without_open_references_is_indexed(tmp_path):
    small = _recipe(tmp_path, "budget-six", 6)
    store = ResultStore(tmp_path / "s")
    reproduce(small, store, device="cpu")
    refs = [open_ref_path(store, small.cell("a").config.to_dict(), seed) for seed in (0, 1)]
    for ref in refs:
        ref.unlink()  # as a store written before open references
    reproduce(small, store, device="cpu")  # nothing to run; the references are repaired
    assert all(ref.is_file() for ref in refs)
    assert sorted(reproduce(_recipe(tmp_path, "budget-nine", 9), store, device="cpu").reused_training) == [
        ("a", 0), ("a", 1)]


def test_a_method_that_reads_the_budget_has_no_open_hash():
    config = {"method": {"name": "acmr"}, "train": {"epochs": 5, "early_stop": True}, "eval": {}}
    assert METHODS["acmr"].reads_epoch_budget and METHODS["a3vse"].reads_epoch_budget
    assert open_budget_hash(config) is None
    assert open_budget_hash({**config, "method": {"name": "aoq"}}) is not None
    assert open_budget_hash({**config, "method": {"name": "closed_form"}}) is None  # fitted, no epochs
    assert open_budget_hash({"train": {"epochs": 5, "early_stop": True}}) is None  # an ensemble
    closed = {"model": {"name": "cca"}, "train": {"epochs": 5, "early_stop": True}}
    assert open_budget_hash(closed) is None  # the model's default method is fitted, not trained


def test_an_undeclared_read_of_the_budget_fails():
    progress = Progress(epoch=1, n_epochs=None, batch=2, steps_per_epoch=5)
    assert progress.step == 7
    with pytest.raises(TrainingError, match="reads_epoch_budget"):
        _ = progress.fraction
    assert Progress(epoch=1, n_epochs=3, batch=2, steps_per_epoch=5).fraction == 7 / 15


NEVER_STOPS = ", early_stop: true, plateau_window: 50"  # no plateau within these budgets


def test_a_larger_budget_resumes_a_run_that_ended_at_its_cap(tmp_path):
    """A run that ended at its budget keeps its last checkpoint; a run with a larger
    budget starts from it, and ends where training from epoch 1 would."""
    from xmrbench.runner.adopt import _kept_checkpoints

    two, four = _recipe(tmp_path, "cap-two", 2, NEVER_STOPS), _recipe(tmp_path, "cap-four", 4, NEVER_STOPS)
    key = open_budget_hash(two.cell("a").config.to_dict())
    store = ResultStore(tmp_path / "s")
    reproduce(two, store, device="cpu")
    assert [n for n, _ in _kept_checkpoints(store, key, 0)] == [2]
    summary = reproduce(four, store, device="cpu")
    assert sorted(summary.ran) == [("a", 0), ("a", 1)] and not summary.reused_training
    assert [n for n, _ in _kept_checkpoints(store, key, 0)] == [4]  # the longer run's, the shorter one dropped

    own = ResultStore(tmp_path / "own")
    reproduce(four, own, device="cpu")
    cell = four.cell("a")
    for seed in (0, 1):
        doc, ref = (s.status(four.id, "a", cell.hash, seed).doc for s in (store, own))
        assert doc.resumed_from_epoch == 2 and ref.resumed_from_epoch is None
        assert doc.metrics == ref.metrics and doc.ranks == ref.ranks and doc.best_epoch == ref.best_epoch
        assert _untimed(doc.curves) == _untimed(ref.curves) and doc.convergence == ref.convergence

    reproduce(_recipe(tmp_path, "cap-three", 3, NEVER_STOPS), store, device="cpu")  # below 4: from epoch 1
    assert [n for n, _ in _kept_checkpoints(store, key, 0)] == [4]


def test_a_run_that_stops_early_drops_the_kept_checkpoints(tmp_path):
    from xmrbench.runner.adopt import _kept_checkpoints

    store = ResultStore(tmp_path / "s")
    one, six = _recipe(tmp_path, "cap-one", 1), _recipe(tmp_path, "cap-six", 6)
    reproduce(one, store, device="cpu")  # one epoch: no plateau window yet, it ends at its cap
    key = open_budget_hash(one.cell("a").config.to_dict())
    assert [n for n, _ in _kept_checkpoints(store, key, 0)] == [1]
    reproduce(six, store, device="cpu")  # resumes after epoch 1 and stops at its plateau after 2
    doc = store.status(six.id, "a", six.cell("a").hash, 0).doc
    assert doc.resumed_from_epoch == 1 and doc.convergence["stopped_early"] and doc.convergence["epochs"] == 2
    assert _kept_checkpoints(store, key, 0) == []


def test_force_trains_from_epoch_one(tmp_path):
    store = ResultStore(tmp_path / "s")
    reproduce(_recipe(tmp_path, "cap-two", 2, NEVER_STOPS), store, device="cpu")
    four = _recipe(tmp_path, "cap-four", 4, NEVER_STOPS)
    reproduce(four, store, device="cpu", force=True)
    assert store.status(four.id, "a", four.cell("a").hash, 0).doc.resumed_from_epoch is None
