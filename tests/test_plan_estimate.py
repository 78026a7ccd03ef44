"""``xmrbench plan`` takes a run's time estimate from stored runs of the same model, in
any recipe of the store, and never from another model's runs."""

from __future__ import annotations

import json

import pytest

from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import reproduce
from xmrbench.runner.plan import estimate
from xmrbench.store.store import ResultStore

from support import tiny_recipe

FIRST = """
  - {id: emb, label: embedding}
  - {id: cca, label: CCA, set: {model.name: cca, model.dim: 4, loss: null}}
"""
SECOND = """
  - {id: emb-wide, label: embedding, set: {model.embed_dim: 24}}
  - {id: cca-small, label: CCA, set: {model.name: cca, model.dim: 3, loss: null}}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def _set_times(store: ResultStore, recipe_id: str, seconds: dict[str, float]) -> None:
    for path in store.recipe_dir(recipe_id).glob("*.json"):
        doc = json.loads(path.read_text())
        if doc.get("kind") != "xmrbench.result":
            continue
        doc["timing"] = {"train_s": seconds[doc["cell"]["id"]], "eval_s": 0.0}
        path.write_text(json.dumps(doc))


def test_estimates_come_from_the_same_model_in_any_recipe(tmp_path):
    (tmp_path / "first.yaml").write_text(tiny_recipe("tiny-first", FIRST, seeds="[0, 1]"))
    (tmp_path / "second.yaml").write_text(tiny_recipe("tiny-second", SECOND, seeds="[0, 1]"))
    first, second = resolve(tmp_path / "first.yaml", profile="smoke"), resolve(tmp_path / "second.yaml", profile="smoke")
    store = ResultStore(tmp_path / "s")
    assert not reproduce(first, store, device="cpu").failed
    _set_times(store, first.id, {"emb": 100.0, "cca": 2.0})

    rows, total, basis = estimate(second, store)
    est = {(r.cell, r.seed): r.seconds for r in rows}
    # no run of this recipe is stored: each row is estimated from its own model's runs,
    # which are of another size (embed_dim 24 against the default, CCA dim 3 against 4)
    assert est[("emb-wide", 0)] == est[("emb-wide", 1)] == 100.0
    assert est[("cca-small", 0)] == est[("cca-small", 1)] == 2.0
    assert total == 204.0 and "the same model, method and dataset" in basis
    assert not any(r.same_size for r in rows)

    # the same cell's other seeds come first
    assert not reproduce(second, store, device="cpu").failed
    _set_times(store, second.id, {"emb-wide": 50.0, "cca-small": 1.0})
    widened = resolve(tmp_path / "second.yaml", profile="smoke", seeds=(0, 1, 2))
    rows, total, basis = estimate(widened, store)
    todo = {r.cell: r.seconds for r in rows if r.state != "done"}
    assert todo == {"emb-wide": 50.0, "cca-small": 1.0} and total == 51.0 and "the same cell" in basis
    assert all(r.same_size for r in rows)


THIRD = """
  - {id: emb-wide-again, label: embedding, set: {model.embed_dim: 24, train.lr: 0.002}}
"""


def test_a_run_of_the_same_size_is_preferred_to_one_of_another(tmp_path):
    """Runs of the same model at the cell's own size come before runs of other sizes;
    an estimate from other sizes is flagged, in the table and in ``--json``."""
    (tmp_path / "first.yaml").write_text(tiny_recipe("tiny-first", FIRST, seeds="[0]"))
    (tmp_path / "second.yaml").write_text(tiny_recipe("tiny-second", SECOND, seeds="[0]"))
    (tmp_path / "third.yaml").write_text(tiny_recipe("tiny-third", THIRD, seeds="[0]"))
    store = ResultStore(tmp_path / "s")
    for name, seconds in (("first", {"emb": 100.0, "cca": 2.0}), ("second", {"emb-wide": 40.0, "cca-small": 1.0})):
        resolved = resolve(tmp_path / f"{name}.yaml", profile="smoke")
        assert not reproduce(resolved, store, device="cpu").failed
        _set_times(store, resolved.id, seconds)
    third = resolve(tmp_path / "third.yaml", profile="smoke")
    rows, total, basis = estimate(third, store)
    # the embed_dim-24 run (40 s), not the median of both sizes (70 s)
    assert [(r.seconds, r.same_size) for r in rows] == [(40.0, True)]
    assert total == 40.0 and "the same model and size, method and dataset" in basis

    from xmrbench.cli.json_out import plan_payload

    (store.recipe_dir("tiny-second") / next(p.name for p in store.recipe_dir("tiny-second").glob("emb-wide--*.json"))
     ).unlink()
    doc = plan_payload(third, store, tmp_path / "s")
    assert doc["runs"][0]["estimate_s"] == 100.0 and doc["runs"][0]["estimate_same_size"] is False
    assert doc["summary"]["estimates_other_size"] == 1


def test_the_wall_time_follows_the_queue_not_the_stages():
    """Three first rounds of 10 s and their second rounds of 5 s on two workers: 25 s when
    a second round starts once its own first round is stored (30 s stage by stage)."""
    from xmrbench.runner.plan import wall_seconds

    seconds, after = [10.0, 10.0, 10.0, 5.0, 5.0, 5.0], [[], [], [], [0], [1], [2]]
    assert wall_seconds(seconds, after, 2) == 25.0
    assert wall_seconds(seconds, after, 1) == sum(seconds)  # one worker: one run after another
    assert wall_seconds(seconds, after, 6) == 15.0  # the longest chain
    with pytest.raises(ValueError):
        wall_seconds(seconds, after, 0)


STAGED = """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ab, label: A+B, ensemble: [a, b]}
"""


def test_plan_states_the_wall_time_for_its_jobs(tmp_path, capsys):
    from support import cli

    path = tmp_path / "staged.yaml"
    path.write_text(tiny_recipe("tiny-staged", STAGED, seeds="[0, 1]"))
    store = ResultStore(tmp_path / "s")
    resolved = resolve(path, profile="smoke", seeds=[0])
    assert not reproduce(resolved, store, device="cpu").failed
    _set_times(store, resolved.id, {"a": 30.0, "b": 60.0, "ab": 6.0})
    code, out, err = cli(["plan", str(path), "--profile", "smoke", "--results", str(store.root), "--jobs", "2",
                          "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)["summary"]
    # seed 1 is left: a (30 s) and b (60 s) at once, then their ensemble (6 s)
    assert summary["estimate_s"] == 96.0 and summary["wall"] == {"jobs": 2, "estimate_s": 66.0}
    code, out, err = cli(["plan", str(path), "--profile", "smoke", "--results", str(store.root), "--jobs", "2"],
                         capsys)
    assert code == 0 and "~1.6 min of run time, one run after another; ~1.1 min with --jobs 2" in " ".join(out.split()), out
    code, out, err = cli(["plan", str(path), "--profile", "smoke", "--results", str(store.root), "--jobs", "0"],
                         capsys)
    assert code == 2 and "--jobs 0" in err and len(err.strip().splitlines()) == 1


def test_an_estimate_from_other_models_is_flagged_as_such(tmp_path):
    """A model with no stored run of its own borrows the recipe's other models' times, and
    the plan says so (``~``, ``estimate_other_model``) rather than calling it the same
    model at another size."""
    from xmrbench.cli.json_out import plan_payload

    (tmp_path / "first.yaml").write_text(tiny_recipe("tiny-first", FIRST, seeds="[0]"))
    first = resolve(tmp_path / "first.yaml", profile="smoke").restricted_to_rows(["emb"])
    store = ResultStore(tmp_path / "s")
    assert not reproduce(first, store, device="cpu").failed
    _set_times(store, first.id, {"emb": 100.0})

    both = resolve(tmp_path / "first.yaml", profile="smoke")
    rows, total, basis = estimate(both, store)
    cca = next(r for r in rows if r.cell == "cca")
    assert (cca.seconds, cca.other_model, cca.same_size) == (100.0, True, True)
    assert "1 run(s) from this recipe" in basis
    doc = plan_payload(both, store, tmp_path / "s")
    run = next(r for r in doc["runs"] if r["cell"] == "cca")
    assert run["estimate_other_model"] is True and run["estimate_same_size"] is True
    assert doc["summary"]["estimates_other_model"] == 1 and doc["summary"]["estimates_other_size"] == 0
