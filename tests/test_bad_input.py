"""The bad-input catalogue: recipes, data directories, command-line arguments, corrupted
results, NaN/inf features, a loss that turns NaN and a full disk. Each mistake ends as one
line on stderr naming the file, key or value, exit code 2 and no traceback, and nothing
already stored is lost or changed. (Corrupted result files are the documented exception:
they are reported in one line and recomputed, never used.)"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from support import cli, tiny_recipe

RECIPE = tiny_recipe(
    "tiny-bad",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ab, label: A+B, ensemble: [a, b]}
""",
    title="bad input test",
    extra="claims:\n  - {id: a-beats-b, text: A beats B, metric: rsum, pairs: [[a, b]]}\n",
)




pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A recipe file and a store holding its three finished runs (computed once)."""
    root = tmp_path_factory.mktemp("good")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE)
    store = root / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from xmrbench.recipe.resolve import resolve
        from xmrbench.runner.driver import reproduce
        from xmrbench.store.store import ResultStore

        summary = reproduce(resolve(recipe, profile="smoke"), ResultStore(store), device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and len(summary.ran) == 3
    return recipe, store


@dataclass
class Case:
    """``setup(tmp, recipe, store) -> args``: the command; ``fragments`` must all be in the one error line."""

    setup: Callable[[Path, Path, Path], list[str]]
    fragments: tuple[str, ...]
    code: int = 2


def _recipe(tmp: Path, old: str, new: str, name: str = "bad.yaml") -> Path:
    assert old in RECIPE, old
    path = tmp / name
    path.write_text(RECIPE.replace(old, new))
    return path


def _show(old: str, new: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda tmp, recipe, store: ["show", str(_recipe(tmp, old, new)), "--profile", "smoke"]


def _run(*extra: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda tmp, recipe, store: ["reproduce", str(recipe), "--profile", "smoke", "--results", str(store),
                                       "--no-report", "--quiet", *extra]


def _precomp(mutate: Callable | None = None) -> Callable[[Path, Path, Path], list[str]]:
    """A miniature directory in the precomp layout (train/dev/test), broken by ``mutate``."""

    def setup(tmp: Path, recipe: Path, store: Path) -> list[str]:
        data = tmp / "precomp"
        data.mkdir()
        rng = np.random.default_rng(7)
        for split, n in (("train", 20), ("dev", 8), ("test", 8)):
            ims = rng.normal(size=(n, 4, 8)).astype(np.float32)
            caps = [f"a red dog and a cat number {i}" for i in range(5 * n)]
            if mutate is not None:
                ims, caps = mutate(split, ims, caps)
            if ims is not None:
                np.save(data / f"{split}_ims.npy", ims)
            if caps is not None:
                (data / f"{split}_caps.txt").write_text("".join(f"{c}\n" for c in caps))
        return ["reproduce", "vsepp-flickr30k", "--profile", "full", "--data-root", str(data), "--results", str(store),
                "--no-report", "--quiet", "--seeds", "0", "--set", "train.epochs=1", "--set", "model.embed_dim=8",
                "--set", "model.word_dim=4", "--set", "data.vocab_min_count=1"]

    return setup


def _at(split: str, fn: Callable) -> Callable:
    return lambda s, ims, caps: fn(ims, caps) if s == split else (ims, caps)


def _poke(value: float, row: int) -> Callable:
    def fn(ims, caps):
        ims[row, 1, 2] = value
        return ims, caps

    return fn


def _check(*extra: str, goldens: str | None = None, reference: str | None = None, target: str | None = None):
    def setup(tmp: Path, recipe: Path, store: Path) -> list[str]:
        ref = tmp / "reference"
        ref.mkdir()
        committed = Path(__file__).resolve().parents[1] / "results" / "reference" / "goldens.json"
        (ref / "goldens.json").write_text(goldens if goldens is not None else committed.read_text())
        if reference is not None:
            (ref / "tiny-bad.json").write_text(reference)
        return ["check", target or str(recipe), "--reference", str(ref), "--results", str(store), *extra]

    return setup


CASES: dict[str, Case] = {
    # -- recipes -----------------------------------------------------------------
    "recipe unknown key": Case(_show("title: bad input test\n", "title: x\ncolumnz: [rsum]\n"), ("bad.yaml", "columnz", "unknown key")),
    "recipe wrong type": Case(_show("title: bad input test", "title: [1, 2]"), ("bad.yaml", "title")),
    "recipe yaml syntax": Case(_show("title: bad input test", "title: [x"), ("bad.yaml", "YAML syntax error")),
    "recipe missing base": Case(_show("id: tiny-bad\n", "id: tiny-bad\nextends: ../_base/none.yaml\n"), ("bad.yaml", "none.yaml")),
    "recipe unknown model": Case(_show("model.linear: true", "model.name: resnet9000"), ("bad.yaml", "resnet9000", "two_branch_embedding")),
    "recipe unknown loss": Case(_show("name: bidirectional_ranking", "name: contrastive_magic"), ("bad.yaml", "contrastive_magic")),
    "recipe unknown model parameter": Case(_show("hidden_dim: 32,", "hiden_dim: 32,"), ("bad.yaml", "hiden_dim")),
    "recipe negative epochs": Case(_show("epochs: 1,", "epochs: -3,"), ("bad.yaml", "train.epochs")),
    "recipe claim names no cell": Case(_show("pairs: [[a, b]]", "pairs: [[a, zz]]"), ("bad.yaml", "a-beats-b", "zz")),
    "recipe paper numbers misaligned": Case(
        _show("- {id: a, label: A}", "- {id: a, label: A, paper: {test: [1.0, 2.0]}}"), ("bad.yaml", "rows")),
    "recipe unknown metric column": Case(_show("columns: [i2t_r1,", "columns: [i2t_r99,"), ("bad.yaml", "i2t_r99")),
    "recipe not a mapping": Case(lambda tmp, r, s: ["show", str(_write(tmp / "list.yaml", "- a\n- b\n"))], ("list.yaml", "mapping")),
    "recipe not utf-8": Case(lambda tmp, r, s: ["show", str(_write(tmp / "bin.yaml", b"id: \xff\xfe\n"))], ("bin.yaml",)),
    "recipe unknown id": Case(lambda tmp, r, s: ["show", "no-such-recipe"], ("unknown recipe", "no-such-recipe")),
    # -- command-line arguments --------------------------------------------------
    "--seeds not numbers": Case(_run("--seeds", "a,b"), ("--seeds", "'a,b'")),
    "--seeds negative": Case(_run("--seeds", "-1"), ("--seeds", "non-negative")),
    "--set without =": Case(_run("--set", "train.lr"), ("--set", "train.lr", "KEY=VALUE")),
    "--set wrong type": Case(_run("--set", "train.lr=fast"), ("train.lr", "fast")),
    "--set unknown key": Case(_run("--set", "train.lrr=0.1"), ("train.lrr", "unknown key")),
    "--profile unknown": Case(_run("--profile", "huge"), ("unknown profile", "huge")),
    "--profile full without data": Case(lambda tmp, r, s: ["reproduce", "vsepp-flickr30k", "--profile", "full"], ("--data-root",)),
    "--data-root not a directory": Case(lambda tmp, r, s: ["reproduce", "vsepp-flickr30k", "--profile", "full", "--data-root",
                                                            str(tmp / "nowhere")], ("--data-root", "nowhere", "not a directory")),
    "--executor unknown": Case(_run("--executor", "threads"), ("--executor", "threads", "local, process, ray")),
    "--jobs zero": Case(_run("--executor", "process", "--jobs", "0"), ("--jobs 0",)),
    "--jobs not a number": Case(_run("--jobs", "many"), ("--jobs", "many")),
    "--retries with local": Case(_run("--retries", "3"), ("--retries", "does not retry")),
    "--address without ray": Case(_run("--executor", "process", "--address", "10.0.0.1:6379"), ("--address", "10.0.0.1:6379")),
    "--device unknown": Case(_run("--device", "quantum"), ("--device", "quantum")),
    "unknown option": Case(_run("--fast"), ("xmrbench reproduce", "--fast")),
    "sweep without parameters": Case(lambda tmp, r, s: ["sweep", str(r), "--profile", "smoke"], ("sweep", "at least one parameter")),
    "sweep unknown parameter": Case(lambda tmp, r, s: ["sweep", str(r), "--profile", "smoke", "--warp", "1,2"], ("--warp", "no config key")),
    "report on an empty store": Case(lambda tmp, r, s: ["report", "--results", str(tmp / "empty")], ("no results",)),
    # -- data directories (precomp layout) ----------------------------------------
    "data dir without splits": Case(_precomp(lambda s, i, c: (None, None)), ("precomp", "no splits")),
    "data captions not 5 per image": Case(_precomp(_at("dev", lambda i, c: (i, c[:-1]))),
                                          ("dev_caps.txt", "39 captions", "multiple of 5")),
    "data NaN feature": Case(_precomp(_at("train", _poke(np.nan, 3))), ("train_ims.npy", "row 3", "NaN")),
    "data inf feature": Case(_precomp(_at("test", _poke(np.inf, 0))), ("test_ims.npy", "row 0", "inf")),
    "data features not 3-D": Case(_precomp(_at("train", lambda i, c: (i[:, 0, :], c))), ("train_ims.npy", "3-D", "(20, 8)")),
    "data dev split missing": Case(_precomp(lambda s, i, c: (None, None) if s == "dev" else (i, c)), ("precomp", "'dev' split")),
    "data empty caption": Case(_precomp(_at("train", lambda i, c: (i, [""] + c[1:]))), ("train_caps.txt", "line 1", "empty")),
    # -- training ----------------------------------------------------------------
    "loss turns NaN": Case(_run("--set", "train.lr=1.0e+30", "--force"), ("tiny-bad/a/seed0", "nan", "epoch 1, batch")),
    "loss turns NaN in a worker": Case(_run("--set", "train.lr=1.0e+30", "--force", "--executor", "process", "--jobs", "1"),
                                       ("tiny-bad/a/seed0", "nan", "epoch 1, batch")),
    # -- the regression gate -------------------------------------------------------
    "check unknown recipe": Case(_check(target="no-such-recipe"), ("unknown recipe", "no-such-recipe")),
    "check corrupted goldens": Case(_check(goldens='{"kind": "xmrbench.goldens", '), ("goldens.json", "corrupt")),
    "check unknown layer": Case(_check("--layers", "kernels,speed"), ("--layers", "unknown layer 'speed'")),
    "check corrupted reference": Case(_check(reference='{"kind": "xmrbench.reference", "cells": ['),
                                      ("tiny-bad.json", "corrupted reference")),
    "check reference dir is a file": Case(lambda tmp, r, s: ["check", str(r), "--reference", str(_write(tmp / "f", "x"))],
                                          ("--reference", "not a directory")),
}


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file() and p.suffix in (".json", ".pt")}


def _assert_intact(store: Path, before: dict[str, bytes]) -> None:
    after = _snapshot(store)
    for name, data in before.items():
        assert after.get(name) == data, f"{name} was changed or lost"
    assert not list(store.rglob("*.tmp"))


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(name, good, tmp_path, capsys):
    recipe, good_store = good
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    before = _snapshot(store)
    case = CASES[name]
    args = case.setup(tmp_path, recipe, store)
    code, out, err = cli(args, capsys)
    line = _one_line(err)
    assert code == case.code, (out, err)
    assert line.startswith("error: ")
    for fragment in case.fragments:
        assert fragment in line, (fragment, line)
    _assert_intact(store, before)


def test_data_feature_size_differs_between_splits(good, tmp_path, capsys):
    recipe, store = good
    args = _precomp(_at("dev", lambda i, c: (i[:, :, :6].copy(), c)))(tmp_path, recipe, tmp_path / "store")
    code, _, err = cli(args, capsys)
    line = _one_line(err)
    assert code == 2 and "dev_ims.npy" in line


# ---------------------------------------------------------------------------------
# corrupted results: reported in one line, recomputed, never used; nothing else touched


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"schema_version": 1, "recipe"', "corrupted result file"),
        ('{"schema_version": 99}', "newer than this xmrbench"),
        ("\x00\x01", "corrupted result file"),
    ],
)
def test_a_corrupted_result_is_reported_and_recomputed(content, fragment, good, tmp_path, capsys):
    recipe, good_store = good
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    victim = next(p for p in (store / "tiny-bad").glob("b--*.json"))
    victim.write_text(content)
    before = {k: v for k, v in _snapshot(store).items() if not k.endswith(victim.name)}
    code, out, err = cli(_run()(tmp_path, recipe, store), capsys)
    assert code == 0, err
    warning = [line for line in out.splitlines() if "recomputing" in line]
    assert len(warning) == 1 and victim.name in warning[0] and fragment in warning[0]
    assert "1 run(s) computed, 2 already done" in out
    json.loads(victim.read_text())["metrics"]["test"]["rsum"]  # valid again
    unchanged = {k: v for k, v in before.items() if "models/b--" not in k}  # b's weights are rewritten with it
    _assert_intact(store, unchanged)


def test_a_corrupted_member_model_fails_the_ensemble_in_one_line(good, tmp_path, capsys):
    recipe, good_store = good
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    model = next((store / "tiny-bad" / "models").glob("a--*.pt"))
    model.write_bytes(b"not a torch file")
    next((store / "tiny-bad").glob("ab--*.json")).unlink()
    before = _snapshot(store)
    code, out, err = cli(_run()(tmp_path, recipe, store), capsys)
    line = _one_line(err)
    assert code == 2 and model.name in line and "cannot read stored model" in line
    _assert_intact(store, before)


def test_a_torn_checkpoint_is_ignored_and_the_run_starts_over(good, tmp_path, capsys):
    recipe, good_store = good
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    result = next((store / "tiny-bad").glob("b--*.json"))
    result.unlink()
    work = store / "tiny-bad" / ".work" / result.stem
    work.mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"torn")
    code, out, err = cli(_run()(tmp_path, recipe, store), capsys)
    assert code == 0, err
    doc = json.loads(result.read_text())
    assert doc["resumed_from_epoch"] is None and doc["curves"]["epoch"] == [1]


# ---------------------------------------------------------------------------------
# a full disk


class _FullDisk:
    """A file object that accepts a few bytes, then fails like a full disk."""

    def __init__(self, path):
        self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, text):
        self.fh.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_a_full_disk_while_storing_a_result_loses_nothing(good, tmp_path, capsys, monkeypatch):
    import builtins

    import xmrbench.store.store as store_module

    recipe, good_store = good
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    victim = next((store / "tiny-bad").glob("b--*.json"))
    victim.unlink()
    before = _snapshot(store)

    def full_open(path, mode="r", *args, **kwargs):
        if "w" in mode and ".json." in str(path) and "resolved" not in str(path):
            return _FullDisk(path)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", full_open, raising=False)
    code, out, err = cli(_run()(tmp_path, recipe, store), capsys)
    line = _one_line(err)
    assert code == 2 and "No space left on device" in line and victim.name in line
    _assert_intact(store, before)
    assert not victim.exists()
    monkeypatch.undo()  # space again: the same command finishes the run
    code, out, err = cli(_run()(tmp_path, recipe, store), capsys)
    assert code == 0 and "1 run(s) computed, 2 already done" in out
    _assert_intact(store, before)


def test_a_full_disk_while_checkpointing_loses_nothing(good, tmp_path, capsys, monkeypatch):
    import xmrbench.engine.train as train_module

    recipe, good_store = good
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    next((store / "tiny-bad").glob("a--*.json")).unlink()
    before = _snapshot(store)

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "_atomic_torch_save", full)
    code, out, err = cli(_run()(tmp_path, recipe, store), capsys)
    line = _one_line(err)
    assert code == 2 and "no space left on device" in line.lower() and "checkpoint.pt" in line
    _assert_intact(store, before)
