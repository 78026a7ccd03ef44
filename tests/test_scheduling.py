"""Scheduling: every executor hands out a run as soon as the runs it needs are stored, not
stage by stage. A later stage's run of one seed starts while an earlier stage's run of
another seed still trains; an ensemble comes right after its last member; a run whose
need has no result is settled with one line, and so are the runs that need it; a run
another process holds is waited for once nothing else can start."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from xmrbench.recipe.resolve import resolve
from xmrbench.runner.driver import reproduce
from xmrbench.runner.executors import ProcessExecutor, TaskQueue
from xmrbench.runner.worker import RunOutcome, RunTask
from xmrbench.store.store import ResultStore

from support import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = tiny_recipe(
    "tiny-sched",
    """
  - {id: a, label: A}
  - {id: b, label: B, set: {model.linear: true}}
  - {id: ab, label: A+B, ensemble: [a, b]}
  - {id: a2, label: A again from A's weights, needs: {init: a}, set: {train.lr: 0.002}}
""",
    title="scheduling test",
    epochs=2,
    seeds="[0, 1, 2]",
)


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "sched.yaml"
    path.write_text(RECIPE)
    return path


# ---------------------------------------------------------------------------
# the queue, on its own


class QueueHooks:
    """Records what the queue reports: each final outcome, each retry."""

    def __init__(self) -> None:
        self.finished_log: list[tuple[tuple[str, int], str, str | None]] = []
        self.retried: list[tuple[str, int]] = []

    def started(self, task):
        return None

    def finished(self, task, outcome):
        self.finished_log.append((task.key, outcome.state, outcome.message))

    def retrying(self, task, outcome):
        self.retried.append(task.key)


def task(cell: str, seed: int, *after: tuple[str, int]) -> RunTask:
    return RunTask(SimpleNamespace(id="r"), cell, seed, "/nowhere", after=tuple(after))  # type: ignore[arg-type]


def outcome(t: RunTask, state: str, *, user_error: bool = False) -> RunOutcome:
    return RunOutcome(state, t.cell_id, t.seed, user_error=user_error)  # type: ignore[arg-type]


def stop(requested: bool = False) -> SimpleNamespace:
    return SimpleNamespace(requested=requested)


def test_a_run_is_handed_out_once_its_own_needs_are_stored():
    a0, a1, b0, b1 = task("a", 0), task("a", 1), task("b", 0, ("a", 0)), task("b", 1, ("a", 1))
    q, hooks = TaskQueue([a0, a1, b0, b1], retries=0, stop=stop()), QueueHooks()
    assert q.pop_ready(hooks) == a0 and q.pop_ready(hooks) == a1
    assert q.pop_ready(hooks) is None  # both second stages wait; the first stage is running
    q.settle(a1, outcome(a1, "ran"), hooks)
    assert q.pop_ready(hooks) == b1  # seed 1's second stage starts while seed 0's first still runs
    assert q.pop_ready(hooks) is None
    q.settle(a0, outcome(a0, "done_elsewhere"), hooks)  # stored by another process: stored all the same
    assert q.pop_ready(hooks) == b0 and not q


def test_a_need_outside_the_batch_counts_as_stored():
    b0 = task("b", 0, ("a", 0))  # a's run was stored before this batch
    q = TaskQueue([b0], retries=0, stop=stop())
    assert q.pop_ready(QueueHooks()) == b0


def test_a_run_whose_need_has_no_result_is_settled_with_one_line_and_so_are_its_dependents():
    a0, a1 = task("a", 0), task("a", 1)
    b0, b1, c0 = task("b", 0, ("a", 0)), task("b", 1, ("a", 1)), task("c", 0, ("b", 0))
    q, hooks = TaskQueue([a0, a1, b0, b1, c0], retries=0, stop=stop()), QueueHooks()
    assert q.pop_ready(hooks) == a0 and q.pop_ready(hooks) == a1
    q.settle(a0, outcome(a0, "failed", user_error=True), hooks)
    assert q.pop_ready(hooks) is None  # b0 and c0 can never run; b1 still waits for a1
    failed = {key: msg for key, st, msg in hooks.finished_log if st == "failed"}
    assert failed[("b", 0)] == "r/b/seed0: not run: it needs a (seed 0), which has no result"
    assert failed[("c", 0)] == "r/c/seed0: not run: it needs b (seed 0), which has no result"
    q.settle(a1, outcome(a1, "ran"), hooks)
    assert q.pop_ready(hooks) == b1 and not q


@pytest.mark.parametrize("state", ["interrupted", "failed"])
def test_an_interrupted_or_crashed_need_blocks_its_dependents(state):
    a0, b0 = task("a", 0), task("b", 0, ("a", 0))
    q, hooks = TaskQueue([a0, b0], retries=0, stop=stop()), QueueHooks()
    q.settle(q.pop_ready(hooks), outcome(a0, state), hooks)
    assert q.pop_ready(hooks) is None and not q
    assert hooks.finished_log[-1][:2] == (("b", 0), "failed")


def test_a_crash_is_retried_first_and_a_busy_run_waits_behind_the_others():
    a0, a1, b1 = task("a", 0), task("a", 1), task("b", 1, ("a", 1))
    q, hooks = TaskQueue([a0, a1, b1], retries=1, stop=stop()), QueueHooks()
    first = q.pop_ready(hooks)
    q.settle(first, outcome(first, "failed"), hooks)  # a crash, not the input's fault
    again = q.pop_ready(hooks)
    assert hooks.retried == [("a", 0)] and again.key == ("a", 0) and again.attempt == 2
    held = q.pop_ready(hooks)
    assert held == a1
    q.settle(held, outcome(held, "busy"), hooks)  # another live process holds a1
    assert hooks.finished_log[-1][:2] == (("a", 1), "busy")
    waiting = q.pop_ready(hooks)  # b1 needs a1: the only run left is the wait for a1
    assert waiting.key == ("a", 1) and waiting.wait and q.pop_ready(hooks) is None
    q.settle(waiting, outcome(waiting, "done_elsewhere"), hooks)
    assert q.pop_ready(hooks) == b1


def test_nothing_is_requeued_once_a_stop_is_requested():
    a0 = task("a", 0)
    q, hooks = TaskQueue([a0], retries=2, stop=stop(True)), QueueHooks()
    q.settle(q.pop_ready(hooks), outcome(a0, "failed"), hooks)
    assert not q and hooks.finished_log[-1][:2] == (("a", 0), "failed") and not hooks.retried


# ---------------------------------------------------------------------------
# the driver's batch


class Capture:
    """An executor that records the batch it is given and runs nothing."""

    name = "capture"

    def __init__(self) -> None:
        self.tasks: list[RunTask] = []

    def run(self, tasks, *, device, hooks, stop):
        self.tasks = list(tasks)

    def close(self):
        pass


def test_the_driver_hands_out_every_run_at_once_with_its_needs_and_ensembles_after_their_members(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke")
    executor = Capture()
    summary = reproduce(resolved, ResultStore(tmp_path / "s"), device="cpu", executor=executor)
    order = [t.key for t in executor.tasks]
    assert order == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("ab", 0), ("b", 1), ("ab", 1), ("b", 2), ("ab", 2),
                     ("a2", 0), ("a2", 1), ("a2", 2)]
    after = {t.key: t.after for t in executor.tasks}
    assert after[("ab", 1)] == (("a", 1), ("b", 1)) and after[("a2", 2)] == (("a", 2),) and after[("a", 0)] == ()
    assert sorted(summary.not_run) == sorted(order)  # nothing ran


def test_a_later_stage_starts_while_an_earlier_stage_of_another_seed_still_trains(recipe, tmp_path):
    resolved = resolve(recipe, profile="smoke", overrides={"train.epochs": 3})
    events: list[tuple[str, str, int]] = []

    class Recorder:
        def run_start(self, cell, seed, index, total):
            from xmrbench.engine.train import NullEvents

            events.append(("start", cell.id, seed))
            return NullEvents()

        def run_skip(self, cell, seed, why):
            pass

        def run_end(self, cell, seed, doc, path):
            events.append(("end", cell.id, seed))

        def warn(self, message):
            pass

    executor = ProcessExecutor(2, threads=1)
    try:
        summary = reproduce(resolved, ResultStore(tmp_path / "s"), device="cpu", executor=executor, reporter=Recorder())
    finally:
        executor.close()
    assert summary.ok and len(summary.ran) == 12
    # stage by stage, no ensemble or round two could start before every run of a and b
    # ended; now one starts as soon as its own seed's runs are stored
    first_later = min(i for i, e in enumerate(events) if e[0] == "start" and e[1] in ("a2", "ab"))
    last_first_stage = max(i for i, e in enumerate(events) if e[0] == "end" and e[1] in ("a", "b"))
    assert first_later < last_first_stage, events
    for cell, needs in (("a2", ["a"]), ("ab", ["a", "b"])):
        for seed in range(3):
            start = events.index(("start", cell, seed))
            assert all(events.index(("end", need, seed)) < start for need in needs), events
