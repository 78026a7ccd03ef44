"""Thread handling: the CPUs a process may use, the OpenMP defaults set before torch loads,
``--threads`` end to end, and the contention benchmark (ratios only, never timed asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xmrbench.runner.threads import available_cpus, cgroup_cpu_limit

from support import cli, tiny_recipe


def test_cgroup_quotas_v2_and_v1(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cpus(tmp_path) == 1  # 1.5 CPUs of quota: one thread, not two fighting for it
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cgroup_cpu_limit(v1) == 4.0 and available_cpus(v1) == min(4, len(os.sched_getaffinity(0)))


def _child(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_affinity_mask_bounds_the_default():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from xmrbench.runner.threads import setup_threads; print(setup_threads())")
    assert _child(code, {}) == "1"


def test_openmp_defaults_are_set_before_torch_and_a_users_choice_wins():
    code = ("from xmrbench.runner.threads import prepare_environment; prepare_environment(); import os, torch; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    policy, env_threads, torch_threads = _child(code, {}).split()
    assert policy == "PASSIVE" and int(env_threads) == available_cpus() == int(torch_threads)
    policy, env_threads, torch_threads = _child(code, {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}).split()
    assert (policy, env_threads, torch_threads) == ("ACTIVE", "1", "1")


RECIPE = tiny_recipe("tiny-threads", "  - {id: a, label: A}\n")


def test_threads_option_reaches_the_run_and_its_result(tmp_path, capsys, one_thread):
    import torch

    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    store = tmp_path / "store"
    before = torch.get_num_threads()
    code, out, err = cli(["reproduce", str(path), "--profile", "smoke", "--results", str(store), "--threads", "2",
                          "--no-report", "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads(next((store / "tiny-threads").glob("*.json")).read_text())
    assert doc["env"]["torch_threads"] == 2 and before == 1
    code, _, err = cli(["reproduce", str(path), "--profile", "smoke", "--results", str(store), "--threads", "0"], capsys)
    assert code == 2 and "--threads 0" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_contention_benchmark_reports_ratios(monkeypatch):
    from xmrbench.bench import contention as bench

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: nothing to compete for")
    # the one-thread policy only (several threads beside a busy process and the other test
    # workers stall at every barrier, up to a minute here): the machinery, not a
    # measurement (docs/threads.md holds the measurements)
    monkeypatch.setattr(bench, "POLICIES", tuple(p for p in bench.POLICIES if p[0] == "one thread"))
    res = bench.contention(None, quick=True, repeats=1, epochs=1)
    assert set(res.ratios) == {"one thread: beside / alone"}
    assert all(v > 0 for v in res.ratios.values()) and len(res.timings) == 2
    names = [t.name for t in res.timings]
    assert names[0] == "one thread (1 threads), alone" and names[1].endswith("beside a busy process")
