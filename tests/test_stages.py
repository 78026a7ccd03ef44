"""Training stages: a later stage starts from an earlier stage's weights and reads an
artifact mined from its embeddings; two rows share the artifact; a kill at any point
resumes without recomputing what was finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import stagekit
import torch

from xmrbench.errors import RecipeError
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import plan_runs, reproduce
from xmrbench.runner.run import DataCache
from xmrbench.runner.stored import load_member
from xmrbench.store.store import ResultStore

from support import cli

stagekit.register()
TESTS = Path(__file__).resolve().parent

NEED = "{cell: round1, miner: test_counting, params: {k: 5}}"
RECIPE = f"""\
id: stages-test
paper: two_branch
table: T
title: two training stages (test only)
columns: [i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10]
protocols:
  test: {{dataset: synthetic, images: 100}}
config:
  model: {{name: two_branch_embedding, hidden_dim: 32, embed_dim: 16}}
  loss: {{name: bidirectional_ranking, reduction: mean}}
  train: {{optimizer: adam, lr: 0.001, epochs: 2, batch_size: 200}}
  eval: {{dev_images: 50}}
profiles:
  smoke: {{seeds: [0], config: {{data: {{size: tiny, train_images: 200}}}}}}
rows:
  - {{id: round1, label: round one, set: {{method.name: test_alternating}}}}
  - id: finetune
    label: round two from round one's weights
    set: {{method.name: test_offline}}
    needs: {{init: round1, artifacts: {{negatives: {NEED}}}}}
  - id: scratch
    label: round two from scratch
    set: {{method.name: test_offline}}
    needs: {{artifacts: {{negatives: {NEED}}}}}
"""


def _recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(text)
    return path


def _log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_resolution_orders_stages_and_hashes_what_a_stage_needs(tmp_path):
    resolved = resolve(_recipe(tmp_path), profile="smoke")
    cells = {c.id: c for c in resolved.cells}
    assert [cells[c].stage for c in ("round1", "finetune", "scratch")] == [0, 1, 1]
    ft, sc = cells["finetune"], cells["scratch"]
    assert ft.needs.init is cells["round1"] and sc.needs.init is None
    assert ft.needs.artifacts[0].key(0) == sc.needs.artifacts[0].key(0)  # one artifact, two users
    assert ft.needs.artifacts[0].key(0) != ft.needs.artifacts[0].key(1)  # one per seed
    # the same config from other weights is another run; another k is another artifact
    assert ft.config.hash() == sc.config.hash() and ft.hash != sc.hash
    other = resolve(_recipe(tmp_path, RECIPE.replace("k: 5", "k: 6")), profile="smoke")
    assert other.cell("scratch").needs.artifacts[0].key(0) != sc.needs.artifacts[0].key(0)
    assert other.cell("scratch").hash != sc.hash
    # --rows of a later stage brings the stages it needs
    assert resolved.restricted_to_rows(["scratch"]).only == {"scratch", "round1"}


@pytest.mark.parametrize("change, message", [
    ("init: round1,", "init: nosuch,"),
    ("miner: test_counting, params: {k: 5}", "miner: nosuch, params: {k: 5}"),
    ("params: {k: 5}", "params: {k: 0}"),
    ("params: {k: 5}", "params: {kk: 5}"),
])
def test_bad_needs_are_one_line_errors(tmp_path, change, message):
    bad = RECIPE.replace(change, message, 1)
    with pytest.raises(RecipeError) as err:
        resolve(_recipe(tmp_path, bad), profile="smoke")
    assert "\n" not in err.value.one_line() and "stages.yaml" in err.value.one_line()


def test_a_cycle_of_stages_is_an_error(tmp_path):
    bad = RECIPE.replace("set: {method.name: test_alternating}}",
                         "set: {method.name: test_offline}, needs: {init: scratch}}")
    with pytest.raises(RecipeError, match="cycle"):
        resolve(_recipe(tmp_path, bad), profile="smoke")


def test_two_stages_share_one_artifact_and_start_from_the_first_stage(tmp_path, monkeypatch, capsys):
    log = tmp_path / "events.log"
    monkeypatch.setenv("STAGEKIT_LOG", str(log))
    path = _recipe(tmp_path)
    store = ResultStore(tmp_path / "results")
    code, out, _ = cli(["plan", str(path), "--profile", "smoke", "--results", str(store.root)], capsys)
    assert code == 0 and "negatives (test_counting of round1)" in out and "init round1" in out
    assert "missing" in out and "finetune, scratch" in out and "3 runs to do and 1 artifact(s) to compute" in out
    resolved = resolve(path, profile="smoke")
    summary = reproduce(resolved, store, device="cpu")
    assert summary.ok and sorted(summary.ran) == [("finetune", 0), ("round1", 0), ("scratch", 0)]
    events = _log(log)
    assert sum(e.startswith("mine ") for e in events) == 1  # computed once, shared by both rows
    artifacts = list(store.artifact_dir().glob("*.pt"))
    assert len(artifacts) == 1
    assert [e for e in events if e.startswith("artifact ")] == [
        "artifact stages-test/finetune/seed0 (200, 5)", "artifact stages-test/scratch/seed0 (200, 5)"]
    # round two from round one's selected weights; the other from the initialisation
    round1, _ = load_member(store, resolved, resolved.cell("round1"), 0, DataCache(), torch.device("cpu"))
    setups = [float(e.split()[1]) for e in events if e.startswith("setup ")]
    assert setups[0] == pytest.approx(stagekit.weights_sum(round1), rel=1e-12)
    assert setups[1] != pytest.approx(setups[0], rel=1e-6)
    # the artifact is round one's hardest negatives over the training split
    doc = torch.load(artifacts[0], weights_only=True)
    assert doc["meta"]["source"]["cell"] == "round1" and doc["tensors"]["i2t"].shape == (200, 5)
    stored = json.loads(store.result_path("stages-test", "finetune", resolved.cell("finetune").hash, 0).read_text())
    assert stored["config"]["needs"]["init"] == resolved.cell("round1").training_hash
    code, out, _ = cli(["plan", str(path), "--profile", "smoke", "--results", str(store.root)], capsys)
    assert code == 0 and "0 of 3 runs to do" in out
    again = reproduce(resolve(path, profile="smoke"), store, device="cpu")
    assert again.ok and not again.ran and sum(e.startswith("mine ") for e in _log(log)) == 1


def test_a_later_stage_names_its_source_by_training_hash(tmp_path, monkeypatch):
    """Another table whose round one only reports differently (eval.store_ranks) shares
    the mined artifact and the round-two trainings; a changed round one does not."""
    monkeypatch.setenv("STAGEKIT_LOG", str(tmp_path / "events.log"))
    first = resolve(_recipe(tmp_path), profile="smoke")
    (tmp_path / "other").mkdir()
    reports = RECIPE.replace("id: stages-test", "id: stages-other").replace(
        "set: {method.name: test_alternating}}", "set: {method.name: test_alternating, eval.store_ranks: false}}")
    other = resolve(_recipe(tmp_path / "other", reports), profile="smoke")
    assert other.cell("round1").hash != first.cell("round1").hash
    assert other.cell("round1").training_hash == first.cell("round1").training_hash
    for row in ("finetune", "scratch"):
        assert other.cell(row).hash == first.cell(row).hash
        assert other.cell(row).needs.artifacts[0].key(0) == first.cell(row).needs.artifacts[0].key(0)
    (tmp_path / "lr").mkdir()
    trains = RECIPE.replace("lr: 0.001", "lr: 0.002")
    changed = resolve(_recipe(tmp_path / "lr", trains), profile="smoke")
    assert changed.cell("scratch").needs.artifacts[0].key(0) != first.cell("scratch").needs.artifacts[0].key(0)
    store = ResultStore(tmp_path / "results")
    assert reproduce(first, store, device="cpu").ok
    again = reproduce(other, store, device="cpu")
    assert again.ok and sorted(again.reused_training) == [("finetune", 0), ("round1", 0), ("scratch", 0)]
    assert sum(e.startswith("mine ") for e in _log(tmp_path / "events.log")) == 1
    assert sum(e.startswith("setup ") for e in _log(tmp_path / "events.log")) == 2  # no second round two


def test_a_store_of_result_documents_only_trains_again_what_a_later_stage_needs(tmp_path, monkeypatch):
    """A store holding the documents but not the models (results/measured): round one is
    done, round two not yet. Round one is trained again (its model is the init and the
    artifact's source), the artifact mined from it; a round one whose artifact is stored
    and that nothing initialises from would not be."""
    log = tmp_path / "events.log"
    monkeypatch.setenv("STAGEKIT_LOG", str(log))
    path = _recipe(tmp_path)
    resolved = resolve(path, profile="smoke").restricted_to_rows(["round1"])
    store = ResultStore(tmp_path / "results")
    assert reproduce(resolved, store, device="cpu").ok
    round1 = resolved.cell("round1")
    model = store.model_path("stages-test", "round1", round1.hash, 0)
    model.unlink()
    both = resolve(path, profile="smoke")
    states = {(c.id, s): state for c, s, state in plan_runs(both, store)}
    assert states == {("round1", 0): "weightless", ("finetune", 0): "missing", ("scratch", 0): "missing"}
    assert {(c.id, s): st for c, s, st in plan_runs(resolved, store)} == {("round1", 0): "done"}  # nothing needs it
    summary = reproduce(both, store, device="cpu")
    assert summary.ok and sorted(summary.ran) == [("finetune", 0), ("round1", 0), ("scratch", 0)]
    assert summary.retrained_weightless == [store.result_path("stages-test", "round1", round1.hash, 0)]
    assert model.is_file() and sum(e.startswith("mine ") for e in _log(log)) == 1
    # with the artifact stored, only the init needs round one's weights; without an init, nothing does
    model.unlink()
    scratch_only = resolve(path, profile="smoke").restricted_to_rows(["round1", "scratch"])
    store.result_path("stages-test", "scratch", both.cell("scratch").hash, 0).unlink()
    assert {(c.id, s): st for c, s, st in plan_runs(scratch_only, store)}[("round1", 0)] == "done"


DRIVER = """\
import sys
sys.path.insert(0, {tests!r})
import stagekit
stagekit.register()
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import reproduce
from xmrbench.store.store import ResultStore
summary = reproduce(resolve({recipe!r}, profile="smoke"), ResultStore({store!r}), device="cpu")
print("ran", sorted(summary.ran), "ok" if summary.ok else "failed", summary.failed)
"""


def _drive(tmp_path: Path, store: Path, log: Path, kill: str | None) -> subprocess.CompletedProcess:
    script = tmp_path / "drive.py"
    script.write_text(DRIVER.format(tests=str(TESTS), recipe=str(tmp_path / "stages.yaml"), store=str(store)))
    env = {**os.environ, "STAGEKIT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    env.pop("STAGEKIT_KILL", None)
    if kill:
        env["STAGEKIT_KILL"] = kill
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)


def _metrics(store: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["cell"]["id"]: json.loads(p.read_text())["metrics"]
            for p in (store / "stages-test").glob("*.json")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The store of an uninterrupted run of the two-stage recipe."""
    tmp = tmp_path_factory.mktemp("straight")
    _recipe(tmp)
    done = _drive(tmp, tmp / "results", tmp / "events.log", None)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    return tmp / "results"


KILLS = ["round1:1", "mine", "finetune:1", "scratch:1"]  # in the order the runs reach them


@pytest.mark.slow
def test_a_kill_at_every_point_resumes_without_recomputing_finished_stages(tmp_path, straight):
    """One process per kill point, each resuming what the previous one left: killed in
    round one's second epoch, then inside the miner, then in each second round's second
    epoch; a last process finishes. Nothing finished before a kill is recomputed or
    rewritten, and the results are those of an uninterrupted run."""
    _recipe(tmp_path)
    store, log = tmp_path / "results", tmp_path / "events.log"
    for k, kill in enumerate([*KILLS, None]):
        finished = {p.name: p.stat().st_mtime_ns for p in (store / "stages-test").glob("*.json")}
        artifacts = {p.name: p.stat().st_mtime_ns for p in (store / "_artifacts").glob("*.pt")}
        before = _log(log)
        done = _drive(tmp_path, store, log, kill)
        if kill is None:
            assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
        else:
            assert done.returncode == -9, kill + done.stdout + done.stderr[-2000:]
        after = _log(log)[len(before):]
        # what was finished before this process is neither recomputed nor rewritten
        assert {p.name: p.stat().st_mtime_ns for p in (store / "stages-test").glob("*.json")
                if p.name in finished} == finished, kill
        now = {p.name: p.stat().st_mtime_ns for p in (store / "_artifacts").glob("*.pt")}
        assert {n: now[n] for n in artifacts} == artifacts, kill
        if k >= 2:  # round one finished in the process killed inside the miner
            assert not [e for e in after if "/round1/" in e], kill
        if k >= 3:  # and the mining was redone, once, by the next one
            assert not [e for e in after if e.startswith("mine ")], kill
    events = _log(log)
    assert sum(e.startswith("mine ") for e in events) == 2  # only the killed mining was done again
    # every killed training stage resumed from its last epoch checkpoint
    for cell in ("round1", "finetune", "scratch"):
        doc = next(json.loads(p.read_text()) for p in (store / "stages-test").glob(f"{cell}--*.json"))
        assert doc["resumed_from_epoch"] == 1, cell
    # and the results are those of an uninterrupted run
    assert _metrics(store) == _metrics(straight)
    assert len(list((store / "_artifacts").glob("*.pt"))) == 1
