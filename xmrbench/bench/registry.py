"""Benchmark registry: name -> function ``(device, *, quick) -> BenchResult``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from xmrbench.bench.adapt import adapt
from xmrbench.bench.aoq import aoq_losses
from xmrbench.bench.attention import attention
from xmrbench.bench.contention import contention
from xmrbench.bench.data import data
from xmrbench.bench.harness import BenchResult
from xmrbench.bench.kernels import machine, ranking, similarity
from xmrbench.bench.mining import mining
from xmrbench.registry import Registry

BENCHMARKS: Registry[Callable[..., BenchResult]] = Registry(
    "benchmark",
    {
        "machine": machine,
        "similarity": similarity,
        "ranking": ranking,
        "attention": attention,
        "data": data,
        "contention": contention,
        "mining": mining,
        "aoq-losses": aoq_losses,
        "adapt": adapt,
    },
)


def run_benchmarks(names: list[str] | None, device: torch.device, *, quick: bool) -> list[BenchResult]:
    selected = names or BENCHMARKS.names()
    return [BENCHMARKS[name](device, quick=quick) for name in selected]
