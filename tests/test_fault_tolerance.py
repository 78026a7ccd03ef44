"""Fault tolerance: kill -9 at random points, Ctrl-C with a process pool, two reproduce
processes on one recipe, and the per-run locks that make all of it safe. Every run must end
up stored exactly once: one valid result file per run, never rewritten after it was written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import reproduce
from xmrbench.runner.locks import RunLock
from xmrbench.runner.run import DataCache
from xmrbench.runner.worker import RunTask, attempt_run
from xmrbench.store.store import ResultStore

from support import tiny_recipe

RECIPE = tiny_recipe(
    "tiny-ft",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: c, label: C, set: {model.hidden_dim: 24}}
""",
    title="fault tolerance test",
    loss="{name: hardest_negative}",
    epochs=2,
    batch_size=250,
    seeds="[0, 1]",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    cache = os.environ["XMRBENCH_CACHE"]  # the test run's cache (conftest)
    return {**os.environ, "XMRBENCH_CACHE": cache, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """The command line in its own process group (like a job started from a shell)."""
    return subprocess.Popen(
        [sys.executable, "-m", "xmrbench.cli.app", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(tmp_path), start_new_session=True,
    )


def _identities(folder: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for path in folder.glob("*.json"):
        st = path.stat()
        out[path.name] = (st.st_ino, st.st_size, st.st_mtime_ns, path.read_bytes())
    return out


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _wait_until(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended early ({proc.returncode}): {err}")
        time.sleep(0.05)
    pytest.fail("timed out")


def _check_store(store: ResultStore, resolved) -> None:
    """One valid result per run, nothing else: no temporaries, no leftover work dirs or locks."""
    folder = store.recipe_dir(resolved.id)
    names = set()
    for cell in resolved.runnable_cells():
        for seed in resolved.seeds:
            st = store.status(resolved.id, cell.id, cell.hash, seed)
            assert st.state == "done", (cell.id, seed, st.problem)
            names.add(st.path.name)
    assert {p.name for p in folder.glob("*.json")} == names
    assert not list(store.root.rglob("*.tmp"))
    assert not list((folder / ".work").iterdir())


@pytest.mark.slow
def test_kill_9_at_random_points_then_a_clean_run_stores_every_run_exactly_once(recipe, tmp_path):
    """A sweep on a process pool killed with -9 at random times (the whole process group,
    like a lost machine, and once only the parent, whose workers must then end themselves)."""
    rng = np.random.default_rng(20240611)
    store_dir = tmp_path / "store"
    args = ["sweep", str(recipe), "--margin", "0.1,0.2", "--rows", "a,b", "--profile", "smoke", "--results",
            str(store_dir), "--executor", "process", "--jobs", "2", "--quiet", "--set", "train.epochs=3"]
    resolved_id = "tiny-ft.sweep-margin"
    folder = store_dir / resolved_id
    seen: dict[str, tuple[int, int, int, bytes]] = {}
    for round_ in range(2):  # the whole group, then only the parent
        proc = _cli(tmp_path, *args)
        _wait_until(lambda p=proc: p.stdout.readline() != "", proc)  # it is up and has resolved the sweep
        time.sleep(float(rng.uniform(0.5, 4.0)))
        if round_ == 1:
            os.kill(proc.pid, signal.SIGKILL)  # only the parent: the workers must not live on
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # (a fork server still importing torch notices its parent's death only once it has)
        assert _group_gone(proc.pid, timeout=90), "a worker outlived its killed parent"
        proc.stdout.close()
        proc.stderr.close()
        now = _identities(folder) if folder.is_dir() else {}
        for name, ident in seen.items():
            assert now[name] == ident, f"{name} was rewritten after it was stored"
        for ident in now.values():
            json.loads(ident[3])  # every file present is complete
        seen = now
    proc = _cli(tmp_path, *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{8 - len(seen)} run(s) computed, {len(seen)} already done" in out
    final = _identities(folder)
    assert len(final) == 8  # 2 rows x 2 margins x 2 seeds
    assert all(final[name] == ident for name, ident in seen.items())
    from xmrbench.runner.sweep import build_sweep

    resolved = build_sweep(str(recipe), ["--margin", "0.1,0.2"], profile="smoke", seeds=None,
                           overrides={"train.epochs": 3}, rows=["a", "b"])
    assert resolved.id == resolved_id
    _check_store(ResultStore(store_dir), resolved)


@pytest.mark.slow
def test_ctrl_c_with_a_process_pool_checkpoints_and_a_rerun_resumes(recipe, tmp_path):
    """Ctrl-C from a terminal reaches the whole process group: the parent and its workers
    (a SIGINT to the parent alone is in tests/test_executors.py)."""
    store_dir = tmp_path / "store"
    args = ["reproduce", str(recipe), "--profile", "smoke", "--results", str(store_dir), "--no-report",
            "--quiet", "--executor", "process", "--jobs", "2", "--set", "train.epochs=4"]
    proc = _cli(tmp_path, *args)
    folder = store_dir / "tiny-ft"
    _wait_until(lambda: folder.is_dir() and any(folder.glob("*.json")), proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert _group_gone(proc.pid)
    assert not list(store_dir.rglob("*.tmp"))
    done_before = _identities(folder)
    assert 1 <= len(done_before) < 6
    checkpoints = {p.parent.name: p for p in (folder / ".work").glob("*/checkpoint.pt")}
    epochs = {name: torch.load(p, weights_only=True)["epoch"] for name, p in checkpoints.items()}
    proc = _cli(tmp_path, *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{6 - len(done_before)} run(s) computed, {len(done_before)} already done" in out
    after = _identities(folder)
    assert len(after) == 6 and all(after[n] == i for n, i in done_before.items())
    for name, epoch in epochs.items():  # every stopped run resumed after its last checkpointed epoch
        doc = json.loads(after[f"{name}.json"][3])
        assert doc["resumed_from_epoch"] == epoch + 1 and doc["curves"]["epoch"] == list(range(1, 5))
    resolved = resolve(recipe, profile="smoke", overrides={"train.epochs": 4})
    _check_store(ResultStore(store_dir), resolved)


_DONE = re.compile(r"^done (\S+) seed (\d+):", re.M)
_SUMMARY = re.compile(r"(\d+) run\(s\) computed, (\d+) already done(?:, (\d+) finished by another process)?")


@pytest.mark.slow
def test_two_reproduce_processes_on_one_recipe_share_the_runs(recipe, tmp_path):
    store_dir = tmp_path / "store"
    args = ["reproduce", str(recipe), "--profile", "smoke", "--results", str(store_dir), "--no-report",
            "--set", "train.epochs=3"]
    first = _cli(tmp_path, *args)
    second = _cli(tmp_path, *args)
    outs = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        outs.append(out)
    computed = [sorted(_DONE.findall(out)) for out in outs]
    assert not set(computed[0]) & set(computed[1])  # no run computed twice
    assert sorted(computed[0] + computed[1]) == sorted((c, s) for c in "abc" for s in "01")
    for out, mine in zip(outs, computed):
        ran, already, elsewhere = (int(x or 0) for x in _SUMMARY.search(out).groups())
        assert ran == len(mine) and ran + already + elsewhere == 6
    _check_store(ResultStore(store_dir), resolve(recipe, profile="smoke", overrides={"train.epochs": 3}))


# ---------------------------------------------------------------------------------
# the locks


HOLD = """
import sys, time
from xmrbench.runner.locks import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    path = tmp_path / ".work" / "r.lock"
    holder = _hold(path, 60)
    try:
        lock = RunLock(path)
        assert not lock.acquire() and not lock.held
        assert lock.holder().startswith(f"{holder.pid}@")
        holder.kill()  # kill -9: the kernel drops the lock
        holder.wait()
        assert lock.acquire(wait=True, poll_s=0.05)
        assert lock.holder().startswith(f"{os.getpid()}@")
        lock.release(remove=True)
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_the_store_is_rechecked_under_the_lock(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0], overrides={"train.epochs": 1})
    store = ResultStore(tmp_path / "s")
    cache, cpu = DataCache(), torch.device("cpu")
    task = RunTask(resolved, "b", 0, str(store.root))  # planned while the run was missing
    assert attempt_run(task, cache=cache, device=cpu).state == "ran"
    path = store.result_path(resolved.id, "b", resolved.cell("b").hash, 0)
    before = store.identity(path)
    out = attempt_run(task, cache=cache, device=cpu)  # as if another process had stored it meanwhile
    assert out.state == "done_elsewhere" and store.identity(path) == before
    # --force: recomputed once ...
    forced = RunTask(resolved, "b", 0, str(store.root), force=True, expect=before)
    out = attempt_run(forced, cache=cache, device=cpu)
    assert out.state == "ran" and store.identity(path) != before
    rewritten = store.identity(path)
    # ... but a second forced process that planned against the old file does not redo it
    out = attempt_run(forced, cache=cache, device=cpu)
    assert out.state == "done_elsewhere" and store.identity(path) == rewritten
    assert not store.lock_path(resolved.id, "b", resolved.cell("b").hash, 0).exists()


def test_a_stored_run_killed_before_its_cleanup_is_tidied_on_the_next_reproduce(recipe, tmp_path):
    """kill -9 between storing a result and removing its checkpoints and lock: the next
    reproduce skips the run and removes what it left (unless another process holds it)."""
    resolved = resolve(recipe, profile="smoke", seeds=[0], overrides={"train.epochs": 1})
    store = ResultStore(tmp_path / "s")
    cell = resolved.cell("a")
    assert len(reproduce(resolved, store, device="cpu").ran) == 3
    work = store.work_dir(resolved.id, "a", cell.hash, 0)
    lock = store.lock_path(resolved.id, "a", cell.hash, 0)
    work.mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"left by a killed writer")
    lock.write_text("")
    holder = _hold(lock, 60)  # held: another process may still be finishing it
    try:
        reproduce(resolved, store, device="cpu")
        assert work.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    summary = reproduce(resolved, store, device="cpu")
    assert len(summary.skipped) == 3 and not summary.ran
    assert not work.exists() and not lock.exists()


class Warnings:
    def __init__(self):
        self.lines = []

    def run_start(self, cell, seed, index, total):
        from xmrbench.engine.train import NullEvents

        return NullEvents()

    def run_skip(self, cell, seed, why):
        self.lines.append(f"skip {cell.id} {seed} {why}")

    def run_end(self, cell, seed, doc, path):
        self.lines.append(f"end {cell.id} {seed}")

    def warn(self, message):
        self.lines.append(f"warn {message}")


def test_a_run_held_by_another_process_is_waited_for_and_taken_over(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0], overrides={"train.epochs": 1})
    store = ResultStore(tmp_path / "s")
    cell = resolved.cell("a")
    holder = _hold(store.lock_path(resolved.id, "a", cell.hash, 0), 3.0)  # then exits without a result
    try:
        rep = Warnings()
        summary = reproduce(resolved, store, device="cpu", reporter=rep)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert summary.ok and summary.waited_for == [("a", 0)] and sorted(summary.ran) == [("a", 0), ("b", 0), ("c", 0)]
    warn = next(line for line in rep.lines if line.startswith("warn"))
    assert f"being computed by another process ({holder.pid}@" in warn and "waiting for it" in warn
    assert rep.lines.index(warn) < rep.lines.index("end b 0") < rep.lines.index("end a 0")  # a was done last
    _check_store(store, resolved)


def test_temporaries_of_live_writers_are_kept(tmp_path):
    store = ResultStore(tmp_path)
    fresh = store.recipe_dir("r") / ".x--h--seed0.json.123.tmp"
    old = store.recipe_dir("r") / ".y--h--seed0.json.124.tmp"
    for path in (fresh, old):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.clean_temporaries("r", older_than_s=3600) == [old]
    assert fresh.exists()
    ckpt = store.work_dir("r", "x", "h", 0) / ".checkpoint.pt.99.tmp"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("")
    assert sorted(store.clean_run_temporaries("r", "x", "h", 0)) == sorted([fresh, ckpt])
