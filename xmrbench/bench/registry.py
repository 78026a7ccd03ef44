"""Benchmark registry: name -> function ``(device, *, quick, ceilings) -> BenchResult``.

:func:`run_benchmarks` measures the machine's ceilings first, once, and hands them to
every benchmark, so that each kernel's floor comes from the same run as its time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from xmrbench.bench.adapt import adapt
from xmrbench.bench.aoq import aoq_losses
from xmrbench.bench.attention import attention
from xmrbench.bench.contention import contention
from xmrbench.bench.data import data
from xmrbench.bench.harness import BenchResult, Ceilings
from xmrbench.bench.kernels import evaluation, machine, similarity, simnet
from xmrbench.bench.mining import mining
from xmrbench.bench.train import train
from xmrbench.registry import Registry

BENCHMARKS: Registry[Callable[..., BenchResult]] = Registry(
    "benchmark",
    {
        "machine": machine,
        "similarity": similarity,
        "eval": evaluation,
        "simnet": simnet,
        "attention": attention,
        "adapt": adapt,
        "mining": mining,
        "train": train,
        "aoq-losses": aoq_losses,
        "data": data,
        "contention": contention,
    },
)


@dataclass
class BenchRun:
    """One ``xmrbench bench`` run: the ceilings it measured and every benchmark's result."""

    ceilings: Ceilings
    results: list[BenchResult]


#: in ``train`` already; run by name only
PART_OF_ANOTHER = ("aoq-losses",)


def run_benchmarks(names: list[str] | None, device: torch.device, *, quick: bool) -> BenchRun:
    selected = names or [name for name in BENCHMARKS.names() if name not in PART_OF_ANOTHER]
    for name in selected:
        BENCHMARKS[name]  # an unknown name fails before anything is timed
    limits = machine(device, quick=quick)
    ceilings = Ceilings.from_timings(limits.timings)
    results = [limits if name == "machine" else BENCHMARKS[name](device, quick=quick, ceilings=ceilings)
               for name in selected]
    return BenchRun(ceilings, results)
