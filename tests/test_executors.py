"""Executors: the process pool and Ray compute every run exactly once, with the same numbers
as in-process execution, forward progress, retry dead workers (boundedly) and never retry
a run that failed because of its input. Ray runs on a local cluster on this machine and is
skipped when Ray is not installed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from xmrbench.engine.train import NullEvents
from xmrbench.errors import UsageError
from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import reproduce
from xmrbench.runner.executors import (
    EXECUTORS,
    LocalExecutor,
    ProcessExecutor,
    make_executor,
)
from xmrbench.store.store import ResultStore

from support import tiny_recipe

RECIPE = tiny_recipe(
    "tiny-exec",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ab, label: A+B, ensemble: [a, b]}
""",
    title="executor test",
    epochs=2,
    seeds="[0, 1]",
)
ALL_RUNS = sorted((c, s) for c in ("a", "b", "ab") for s in (0, 1))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


class Recorder:
    """A reporter that records every call (with epoch events per run)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.ended: list[tuple[str, int]] = []
        self.skipped: list[tuple[str, int, str]] = []
        self.failed: list[tuple[str, int, str]] = []
        self.warnings: list[str] = []
        self.epochs: dict[tuple[str, int], list[int]] = {}

    def run_start(self, cell, seed, index, total):
        self.started.append((cell.id, seed))
        recorder, key = self, (cell.id, seed)

        class Events(NullEvents):
            def epoch_end(self, epoch, stats):
                recorder.epochs.setdefault(key, []).append(epoch)

        return Events()

    def run_skip(self, cell, seed, why):
        self.skipped.append((cell.id, seed, why))

    def run_end(self, cell, seed, doc, path):
        self.ended.append((cell.id, seed))

    def run_failed(self, cell, seed, message):
        self.failed.append((cell.id, seed, message))

    def warn(self, message):
        self.warnings.append(message)


def stored_metrics(store: ResultStore, resolved) -> dict[tuple[str, int], dict]:
    out = {}
    for cell in resolved.runnable_cells():
        for seed in resolved.seeds:
            st = store.status(resolved.id, cell.id, cell.hash, seed)
            assert st.state == "done", (cell.id, seed, st.problem)
            out[(cell.id, seed)] = st.doc.metrics
    return out


def result_files(root: Path) -> list[Path]:
    return sorted((root / "tiny-exec").glob("*.json"))


def test_process_pool_runs_each_once_with_the_numbers_of_in_process_execution(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke")
    local = ResultStore(tmp_path / "local")
    assert torch.get_num_threads() == 1  # as in the pool: the thread count changes the kernels' summation order
    assert sorted(reproduce(resolved, local, device="cpu").ran) == ALL_RUNS
    pooled = ResultStore(tmp_path / "pool")
    rec = Recorder()
    executor = ProcessExecutor(2, threads=1)
    try:
        summary = reproduce(resolved, pooled, device="cpu", executor=executor, reporter=rec)
    finally:
        executor.close()
    assert summary.ok and sorted(summary.ran) == ALL_RUNS and not summary.failed
    assert sorted(rec.started) == ALL_RUNS and sorted(rec.ended) == ALL_RUNS  # once each
    assert all(rec.epochs[(c, s)] == [0, 1] for c, s in ALL_RUNS if c != "ab")  # progress crossed processes
    assert len(result_files(pooled.root)) == 6
    assert stored_metrics(pooled, resolved) == stored_metrics(local, resolved)
    assert not list(pooled.root.rglob("*.tmp")) and not list((pooled.root / "tiny-exec" / ".work").iterdir())
    assert not mp.active_children()  # the pool is gone


class InterruptAfterFirst(Recorder):
    """Presses Ctrl-C (SIGINT to this process) when the first run has finished."""

    def run_end(self, cell, seed, doc, path):
        super().run_end(cell, seed, doc, path)
        if len(self.ended) == 1:
            os.kill(os.getpid(), signal.SIGINT)


class KillFirstWorker(Recorder):
    """Kills the worker process that computes the first run, right after it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.killed: list[int] = []

    def run_start(self, cell, seed, index, total):
        events = super().run_start(cell, seed, index, total)
        if not self.killed:
            for child in mp.active_children():
                os.kill(child.pid, signal.SIGKILL)
                self.killed.append(child.pid)
        return events


def test_a_dead_worker_is_retried_and_its_run_done_once(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    store = ResultStore(tmp_path / "s")
    rec = KillFirstWorker()
    executor = ProcessExecutor(1, retries=1)
    try:
        summary = reproduce(resolved, store, device="cpu", executor=executor, reporter=rec)
    finally:
        executor.close()
    assert len(rec.killed) == 1
    assert summary.ok and sorted(summary.ran) == [("a", 0), ("ab", 0), ("b", 0)]
    assert any("died" in w and "attempt 1" in w and "retrying" in w for w in rec.warnings), rec.warnings
    assert rec.started.count(rec.started[0]) == 2 and rec.ended.count(rec.started[0]) == 1
    assert len(result_files(store.root)) == 3


def test_retries_are_bounded_and_the_error_is_reported_per_run(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0])
    store = ResultStore(tmp_path / "s")
    rec = KillFirstWorker()
    executor = ProcessExecutor(1, retries=0)
    try:
        summary = reproduce(resolved, store, device="cpu", executor=executor, reporter=rec, keep_going=True)
    finally:
        executor.close()
    first = rec.started[0]
    assert (summary.failed[0].cell_id, summary.failed[0].seed) == first
    failure = summary.failed[0]
    assert not failure.user_error and failure.attempts == 1 and "died (exit code -9)" in failure.message
    assert rec.failed[0] == (*first, failure.message)
    # keep_going: the other member still ran; the ensemble needs the dead one: not started, one line
    assert ("b" if first[0] == "a" else "a", 0) in summary.ran
    (ens,) = [f for f in summary.failed if f.cell_id == "ab"]
    assert ens.user_error and ens.message == f"tiny-exec/ab/seed0: not run: it needs {first[0]} (seed 0), which has no result"
    assert ("ab", 0) not in rec.started


def test_a_run_that_fails_on_its_input_is_not_retried(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", seeds=[0], overrides={"train.lr": 1.0e30})
    store = ResultStore(tmp_path / "s")
    rec = Recorder()
    executor = ProcessExecutor(1, retries=3)
    try:
        summary = reproduce(resolved, store, device="cpu", executor=executor, reporter=rec)
    finally:
        executor.close()
    assert summary.failed and not summary.interrupted
    failure = summary.failed[0]
    assert failure.user_error and failure.attempts == 1
    assert "the loss became nan at epoch 1, batch" in failure.message and "tiny-exec/a/seed0" in failure.message
    assert not any("retrying" in w for w in rec.warnings)
    assert len(rec.started) == 1  # fail fast: nothing else was started after the failure
    assert ("ab", 0) in summary.not_run and not result_files(store.root)


def test_sigint_to_the_parent_stops_the_workers_at_an_epoch_end(recipe, tmp_path):
    """``kill -INT`` of the parent alone (no terminal): the workers stop through the shared event."""
    resolved = resolve(recipe, profile="smoke", overrides={"train.epochs": 6})
    store = ResultStore(tmp_path / "s")
    executor = ProcessExecutor(2)
    try:
        summary = reproduce(resolved, store, device="cpu", executor=executor, reporter=InterruptAfterFirst())
        assert summary.interrupted and summary.ran and ("ab", 0) in summary.not_run
        work = store.recipe_dir("tiny-exec") / ".work"
        stopped = {p.parent.name for p in work.glob("*/checkpoint.pt")}
        summary2 = reproduce(resolved, store, device="cpu", executor=executor)
    finally:
        executor.close()
    assert summary2.ok and sorted(summary.ran + summary2.ran) == ALL_RUNS
    for cell_id, seed in summary2.ran:
        cell = resolved.cell(cell_id)
        if store.run_name(cell_id, cell.hash, seed) in stopped:
            assert store.status("tiny-exec", cell_id, cell.hash, seed).doc.resumed_from_epoch >= 1
    assert not mp.active_children()


def test_executor_options_are_checked():
    assert EXECUTORS.names() == ["local", "process", "ray"]
    assert isinstance(make_executor("local"), LocalExecutor)
    pool = make_executor("process", jobs=3, retries=0)
    assert isinstance(pool, ProcessExecutor) and pool.jobs == 3 and pool.retries == 0
    for kwargs, fragment in [
        ({"name": "threads"}, "unknown executor"),
        ({"name": "process", "jobs": 0}, "--jobs 0"),
        ({"name": "process", "retries": -1}, "--retries -1"),
        ({"name": "local", "jobs": 4}, "--executor process"),
        ({"name": "local", "retries": 2}, "does not retry"),
        ({"name": "process", "address": "h:1"}, "only --executor ray"),
    ]:
        with pytest.raises(UsageError) as info:
            make_executor(**kwargs)
        assert fragment in info.value.one_line()


# ---------------------------------------------------------------------------------
# Ray, on a local cluster started here


HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, _temp_dir=sys.argv[1])
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """Environment for Ray processes: a private HOME and no token file or usage report."""
    pytest.importorskip("ray")
    home = tmp_path_factory.mktemp("home")
    return {"HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_head(ray_env, tmp_path_factory):
    """A Ray head node on this machine; yields its address on loopback (127.0.0.1:port)."""
    temp = tempfile.mkdtemp(prefix="xr", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, **ray_env, "OMP_NUM_THREADS": "1",
           "XMRBENCH_CACHE": str(tmp_path_factory.getbasetemp() / "xmrbench-cache")}
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", HEAD, temp], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    try:
        if not line or ":" not in line[0]:
            pytest.fail("the Ray head did not start")
        yield "127.0.0.1:" + line[0].strip().rsplit(":", 1)[1]
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_cluster_through_the_command_line(ray_head, ray_env, recipe, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, **ray_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "xmrbench.cli.app", "reproduce", str(recipe), "--profile", "smoke",
         "--results", str(store), "--executor", "ray", "--address", ray_head, "--no-report"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 run(s) computed, 0 already done" in proc.stdout
    assert sum(line.startswith("done ") for line in proc.stdout.splitlines()) == 6  # progress per finished run
    files = result_files(store)
    assert len(files) == 6
    resolved = resolve(recipe, profile="smoke")
    assert sorted(stored_metrics(ResultStore(store), resolved)) == ALL_RUNS
    assert not list(store.rglob("*.tmp")) and not list((store / "tiny-exec" / ".work").iterdir())


@pytest.mark.slow
def test_ray_ctrl_c_stops_runs_at_an_epoch_end_and_a_rerun_resumes(ray_head, ray_env, recipe, tmp_path, monkeypatch):
    from xmrbench.runner.executors import RayExecutor

    for key, value in ray_env.items():
        monkeypatch.setenv(key, value)
    resolved = resolve(recipe, profile="smoke", overrides={"train.epochs": 6})
    store = ResultStore(tmp_path / "s")
    executor = RayExecutor(address=ray_head)
    try:
        rec = InterruptAfterFirst()
        summary = reproduce(resolved, store, device="cpu", executor=executor, reporter=rec)
        assert summary.interrupted and len(summary.ran) >= 1 and summary.not_run
        assert ("ab", 0) in summary.not_run and ("ab", 1) in summary.not_run  # nothing new started
        work = store.recipe_dir("tiny-exec") / ".work"
        checkpoints = {p.parent.name for p in work.glob("*/checkpoint.pt")}
        summary2 = reproduce(resolved, store, device="cpu", executor=executor, reporter=Recorder())
    finally:
        executor.close()
    assert summary2.ok and sorted(summary2.ran + summary.ran) == ALL_RUNS
    for cell_id, seed in summary2.ran:  # runs stopped at an epoch end resumed from their checkpoint
        cell = resolved.cell(cell_id)
        doc = store.status("tiny-exec", cell_id, cell.hash, seed).doc
        if store.run_name(cell_id, cell.hash, seed) in checkpoints:
            assert doc.resumed_from_epoch is not None and doc.resumed_from_epoch >= 1
    assert len(result_files(store.root)) == 6
