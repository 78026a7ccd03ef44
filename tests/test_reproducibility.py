"""Reproducibility: the same recipe, seed and machine give identical numbers in two separate
processes; a run stopped at an epoch end and resumed gives the numbers of an uninterrupted
one; and every result records the versions and hardware it was produced with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xmrbench.engine.train import NullEvents
from xmrbench.provenance.env import environment
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.run import DataCache, run_one
from xmrbench.store.store import ResultStore

from support import tiny_recipe

RECIPE = tiny_recipe(
    "tiny-repro",
    """
  - {id: a, label: A}
  - {id: vse, label: VSE, set: {model.name: vsepp, model.embed_dim: 16, model.word_dim: 8, loss.name: hardest_negative}}
""",
    title="reproducibility test",
    model="{name: two_branch_embedding, hidden_dim: 32, embed_dim: 16, dropout: 0.5}",
    epochs=3,
    train_extra=", sampler: neighbourhood",
    seeds="[0, 1]",
)


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


def _reproduce(recipe: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "xmrbench.cli.app", "reproduce", str(recipe), "--profile", "smoke", "--results",
         str(store), "--no-report", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.mark.slow
def test_two_processes_give_identical_numbers(recipe, tmp_path):
    stores = [tmp_path / "one", tmp_path / "two"]
    procs = [_reproduce(recipe, s) for s in stores]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    docs = [{p.name: json.loads(p.read_text()) for p in (s / "tiny-repro").glob("*.json")} for s in stores]
    assert sorted(docs[0]) == sorted(docs[1]) and len(docs[0]) == 4
    for name, one in docs[0].items():
        two = docs[1][name]
        for key in ("metrics", "ranks", "best_epoch", "n_params", "protocols", "config", "dataset"):
            assert one[key] == two[key], (name, key)
        assert one["curves"]["train_loss"] == two["curves"]["train_loss"]
        assert one["curves"]["dev_score"] == two["curves"]["dev_score"]
    for name in docs[0]:  # and the stored weights are the same tensors
        pt = Path("models") / name.replace(".json", ".pt")
        a, b = (torch.load(s / "tiny-repro" / pt, weights_only=True)["state_dict"] for s in stores)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _StopAfterFirstEpoch(NullEvents):
    def __init__(self) -> None:
        self.ended = 0

    def epoch_end(self, epoch, stats):
        self.ended += 1


@pytest.mark.parametrize("cell_id", ["a", "vse"])
def test_a_resumed_run_equals_an_uninterrupted_one(cell_id, recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[1])
    cell = resolved.cell(cell_id)
    cache = DataCache()
    cpu = torch.device("cpu")
    whole = ResultStore(tmp_path / "whole")
    doc_whole, _ = run_one(resolved, cell, 1, store=whole, cache=cache, device=cpu)
    parts = ResultStore(tmp_path / "parts")
    events = _StopAfterFirstEpoch()
    with pytest.raises(KeyboardInterrupt):  # stopped at the end of epoch 1, its checkpoint written
        run_one(resolved, cell, 1, store=parts, cache=cache, device=cpu, events=events,
                stop_requested=lambda: events.ended >= 1)
    assert (parts.work_dir(resolved.id, cell_id, cell.hash, 1) / "checkpoint.pt").is_file()
    doc_parts, _ = run_one(resolved, cell, 1, store=parts, cache=cache, device=cpu)
    assert doc_parts.resumed_from_epoch == 1 and doc_whole.resumed_from_epoch is None
    assert doc_parts.metrics == doc_whole.metrics and doc_parts.ranks == doc_whole.ranks
    assert doc_parts.curves["train_loss"] == doc_whole.curves["train_loss"]
    assert doc_parts.best_epoch == doc_whole.best_epoch


def test_every_result_records_versions_and_hardware(recipe, tmp_path, capsys):
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    cell = resolved.cell("a")
    doc, path = run_one(resolved, cell, 0, store=ResultStore(tmp_path), cache=DataCache(), device=torch.device("cpu"))
    stored = json.loads(path.read_text())["env"]
    here = environment(torch.device("cpu"))
    for key in ("xmrbench", "python", "torch", "numpy", "platform", "machine", "cpu", "cpu_count", "torch_threads",
                "device", "cuda_available", "git_commit"):
        assert key in stored, key
        assert stored[key] == here[key], key
    assert stored["torch_threads"] == 1 and stored["device"] == "cpu"
    from xmrbench.cli.app import main

    old = sys.argv
    sys.argv = ["xmrbench", "env", "--device", "cpu"]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = old
    assert info.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(here) and printed["torch"] == torch.__version__


@pytest.mark.slow
def test_two_threads_give_identical_numbers_with_repeated_index_gathers(tmp_path):
    """VSRN's caption loss gathers each image's regions once per caption (repeated
    indices): with two threads the backward of that gather must still add in a fixed
    order. Two trainings in one process (other allocations, other thread timing) agree."""
    from xmrbench.data.registry import DATASETS
    from xmrbench.engine.inputs import PreparedData
    from xmrbench.engine.train import seed_everything, train_and_evaluate

    from support import base_recipe

    cfg = resolve(base_recipe(tmp_path, "vsrn", "aoq", "vsrn"), profile="smoke").cells[0].config
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, "regions", "tokens")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outs = []
        for k in range(2):
            (tmp_path / str(k)).mkdir()
            outs.append(train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"), work_dir=tmp_path / str(k)))
    finally:
        torch.set_num_threads(threads)
    assert outs[0].curves["train_loss"] == outs[1].curves["train_loss"]
    assert all(torch.equal(outs[0].state_dict[k], outs[1].state_dict[k]) for k in outs[0].state_dict)
    seed_everything(0, torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()


def test_seeding_switches_on_the_deterministic_kernels_without_loading_the_compiler():
    code = (
        "import sys, torch\n"
        "from xmrbench.engine.train import seed_everything\n"
        "assert not torch.are_deterministic_algorithms_enabled()\n"
        "seed_everything(0, torch.device('cpu'))\n"
        "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),\n"
        "      'torch._inductor.config' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
