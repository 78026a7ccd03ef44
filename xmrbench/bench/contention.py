"""Training beside a competing process: the slowdown of each thread policy, as ratios.

On a machine whose cores are all busy with one other process, an OpenMP runtime that
spin-waits at the end of every parallel region wastes the time slices it gets: a
thread whose partner was descheduled spins until the partner runs again, so every
small operation of a training step can cost a scheduler time slice. Training then
takes several times longer than with one core fewer.

The benchmark trains one fixed small model (median of several trainings) (VSE++ with a GRU text encoder on the tiny
synthetic world: many short parallel regions per step) in a fresh process per policy —
the OpenMP wait policy is read once, when the runtime loads — alone, and beside one
single-threaded busy loop, and reports ``beside / alone`` per policy. The policies:

- ``spin``: every core, OpenMP's default wait policy (what torch does by default);
- ``passive``: every core, ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers);
- ``one thread``: a single torch thread;
- ``xmrbench default``: what ``xmrbench`` itself sets up (:mod:`xmrbench.runner.threads`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from xmrbench.bench.harness import BenchResult, Timing

#: (label, environment overrides, threads: None = every available core)
POLICIES: tuple[tuple[str, dict[str, str], int | None], ...] = (
    ("spin", {"OMP_WAIT_POLICY": "ACTIVE"}, None),
    ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
    ("one thread", {"OMP_WAIT_POLICY": "PASSIVE"}, 1),
    ("xmrbench default", {}, None),
)

_BUSY = "while True:\n    pass\n"


def workload(epochs: int, repeats: int) -> float:
    """Train the fixed model in this process ``repeats`` times; the median wall seconds of one training."""
    import statistics

    import torch

    from xmrbench.data.registry import DATASETS
    from xmrbench.engine.inputs import PreparedData
    from xmrbench.engine.train import train_and_evaluate
    from xmrbench.recipe.config import validate_cell_config

    raw = {
        "data": {"name": "synthetic", "size": "tiny"},
        "model": {"name": "vsepp", "embed_dim": 64, "word_dim": 32, "image_input": "global"},
        "loss": {"name": "hardest_negative"},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.002},
        "eval": {"store_ranks": False},
    }
    cfg = validate_cell_config(raw, where="bench contention")
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, "global", "tokens")
    train_and_evaluate(cfg, 0, prepared, device=torch.device("cpu"))  # warm-up: caches, allocator
    times = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        train_and_evaluate(cfg, seed + 1, prepared, device=torch.device("cpu"))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child_main(epochs: int, repeats: int, threads: int | None) -> None:
    """One measurement in a fresh process (the caller has already set its OpenMP environment)."""
    from xmrbench.runner.threads import setup_threads

    used = setup_threads(threads)
    print(json.dumps({"seconds": workload(epochs, repeats), "threads": used}))


def _run_child(env_over: dict[str, str], threads: int | None, epochs: int, repeats: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update(env_over)
    # as the command line does: the OpenMP defaults are set before anything imports torch
    code = ("from xmrbench.runner.threads import prepare_environment; prepare_environment(); "
            f"from xmrbench.bench.contention import _child_main; _child_main({epochs}, {repeats}, {threads!r})")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def contention(device: Any, *, quick: bool, ceilings: Any = None, repeats: int | None = None,
               epochs: int | None = None) -> BenchResult:
    """Slowdown of training beside one busy process, per thread policy (``beside / alone``).

    ``repeats``: trainings per configuration (their median is reported), ``epochs`` per
    training; defaults 3 x 2 epochs (``quick``) or 5 x 4."""
    default_epochs, default_repeats = (2, 3) if quick else (4, 5)
    repeats, epochs = repeats or default_repeats, epochs or default_epochs
    res = BenchResult("contention", "training beside one single-threaded busy process, per thread policy")
    cpus = os.cpu_count() or 1
    if cpus < 2:
        res.notes.append("one CPU: there is no second core to compete for; skipped")
        return res
    for label, env_over, threads in POLICIES:
        alone = _run_child(env_over, threads, epochs, repeats)
        busy = subprocess.Popen([sys.executable, "-c", _BUSY])
        try:
            beside = _run_child(env_over, threads, epochs, repeats)
        finally:
            busy.kill()
            busy.wait()
        res.timings.append(Timing(f"{label} ({alone['threads']} threads), alone", alone["seconds"], repeats))
        res.timings.append(Timing(f"{label} ({beside['threads']} threads), beside a busy process", beside["seconds"],
                                  repeats))
        res.ratios[f"{label}: beside / alone"] = beside["seconds"] / alone["seconds"]
    alone = {t.name.split(" (")[0]: t.seconds for t in res.timings if t.name.endswith("alone")}
    if "spin" in alone and "passive" in alone:
        res.ratios["passive alone / spin alone (cost of not spinning)"] = alone["passive"] / alone["spin"]
    res.notes.append(f"{cpus} CPUs; each configuration in a fresh process (the wait policy is read at start-up)")
    return res
