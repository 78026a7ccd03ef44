"""Nothing in a results store runs code when read: checkpoints and stored models are read
with ``torch.load(weights_only=True)`` only. A planted pickle whose ``__reduce__`` would
create a marker is refused: as a checkpoint the run starts over (with a warning), as an
ensemble member's stored model ``reproduce`` exits 2 with one line naming the file."""

from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from xmrbench.engine.train import CHECKPOINT_VERSION, check_plain, load_plain
from xmrbench.errors import StoreError
from xmrbench.recipe.resolve import resolve
from xmrbench.store.store import ResultStore

from support import cli, tiny_recipe

RECIPE = tiny_recipe(
    "tiny-safe",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ens, label: A+B, ensemble: [a, b]}
""",
    title="safe loading test",
    epochs=2,
    batch_size=250,
)


class Plant:
    """Unpickling this object creates the directory ``marker`` (``os.mkdir``): code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path: Path, marker: Path, **fields) -> None:
    """A ``torch.save`` file at ``path`` that runs code when unpickled (inside an otherwise plausible dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = Plant(marker)  # one object (pickled once) where a checkpoint or a model keeps its weights
    torch.save({**fields, "model": payload, "state_dict": payload}, path)


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def _cells(recipe: Path):
    resolved = resolve(recipe, profile="smoke")
    return resolved, {c.id: c for c in resolved.cells}


def test_the_planted_pickle_runs_code_when_unpickled_and_load_plain_refuses_it(tmp_path):
    control, marker = tmp_path / "control-marker", tmp_path / "marker"
    plant(tmp_path / "control.pt", control)
    torch.load(tmp_path / "control.pt", weights_only=False)  # what the old reader did
    assert control.exists()  # so the plant is live: the tests below would see it fire
    plant(tmp_path / "evil.pt", marker)
    with pytest.raises(StoreError) as err:
        load_plain(tmp_path / "evil.pt")
    assert not marker.exists()
    message = err.value.one_line()
    assert str(tmp_path / "evil.pt") in message and "refused" in message and "\n" not in message


def test_load_plain_refuses_torn_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(2), "b": [1, 2.5, "x", None, (3, 4)], "c": OrderedDict(w=torch.zeros(1))}, good)
    assert load_plain(good)["b"] == [1, 2.5, "x", None, (3, 4)]
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:40])
    with pytest.raises(StoreError, match="torn, or not written by xmrbench"):
        load_plain(torn)
    torn.write_bytes(b"not a torch file")  # parses as a broken pickle: unreadable, not "refused"
    with pytest.raises(StoreError, match="torn, or not written by xmrbench"):
        load_plain(torn, what="checkpoint")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(StoreError, match="a list, not the dict"):
        load_plain(tmp_path / "list.pt")


def test_check_plain_accepts_state_dicts_and_refuses_objects():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    check_plain({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "curves": {"epoch": [1]}, "torch_rng": torch.get_rng_state(), "best_state": None})
    with pytest.raises(TypeError, match=r"best_dev\.rsum.*numpy"):
        check_plain({"best_dev": {"rsum": np.float64(1.0)}})
    with pytest.raises(TypeError, match="Plant"):
        check_plain({"x": [Plant(Path("never"))]})


@pytest.mark.usefixtures("one_thread")
def test_a_planted_checkpoint_is_never_unpickled_and_the_run_starts_over(recipe, tmp_path, capsys):
    resolved, cells = _cells(recipe)
    root, marker = tmp_path / "results", tmp_path / "marker"
    store = ResultStore(root)
    a = cells["a"]
    ckpt = store.work_dir(resolved.id, a.id, a.hash, 0) / "checkpoint.pt"
    # everything a real checkpoint of this run would carry, so that only the refusal stops its use
    plant(ckpt, marker, version=CHECKPOINT_VERSION, cell_hash=a.config.hash(), seed=0, epoch=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = cli(["reproduce", str(recipe), "--profile", "smoke", "--results", str(root),
                              "--rows", "a", "--no-report", "--quiet"], capsys)
    assert code == 0, err
    assert not marker.exists()
    said = [str(w.message) for w in caught] + (out + err).splitlines()  # the warning is printed with the progress
    assert any(str(ckpt) in line and "refused" in line and "over from epoch 1" in line for line in said), said
    doc = json.loads(store.result_path(resolved.id, a.id, a.hash, 0).read_text())
    assert doc["resumed_from_epoch"] is None and doc["curves"]["epoch"] == [1, 2]  # recomputed from scratch
    assert "Traceback" not in err
    # what it stored instead reads back without unpickling anything
    stored = torch.load(store.model_path(resolved.id, a.id, a.hash, 0), weights_only=True)
    assert stored["seed"] == 0 and all(isinstance(v, torch.Tensor) for v in stored["state_dict"].values())


@pytest.mark.usefixtures("one_thread")
def test_a_planted_member_model_stops_the_ensemble_with_one_line(recipe, tmp_path, capsys):
    resolved, cells = _cells(recipe)
    root, marker = tmp_path / "results", tmp_path / "marker"
    store = ResultStore(root)
    code, _, err = cli(["reproduce", str(recipe), "--profile", "smoke", "--results", str(root),
                        "--rows", "a,b", "--no-report", "--quiet"], capsys)
    assert code == 0, err
    b = cells["b"]
    model_path = store.model_path(resolved.id, b.id, b.hash, 0)
    assert torch.load(model_path, weights_only=True)["state_dict"]  # the honest file loads
    model_path.unlink()
    plant(model_path, marker, config={}, seed=0)
    code, _, err = cli(["reproduce", str(recipe), "--profile", "smoke", "--results", str(root),
                        "--no-report", "--quiet"], capsys)
    assert code == 2, err
    assert not marker.exists()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if str(model_path) in line]
    assert len(lines) == 1 and "refused" in lines[0], err
    ens = cells["ens"]
    assert not store.result_path(resolved.id, ens.id, ens.hash, 0).exists()
