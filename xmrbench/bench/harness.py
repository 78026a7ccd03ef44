"""Timing harness for ``xmrbench bench``.

Every benchmark reports *ratios measured within one run* (a fast kernel against its
reference or a peer-style loop, or against this machine's measured limits), never an
absolute target: absolute seconds depend on the machine, ratios much less.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Timing:
    name: str
    seconds: float  # median over repeats
    repeats: int
    work: float | None = None  # e.g. FLOPs or bytes per call
    unit: str | None = None  # what ``work`` counts ("flop", "byte", "exp", "pair")

    @property
    def rate(self) -> float | None:
        return None if self.work is None else self.work / self.seconds


@dataclass
class BenchResult:
    """One benchmark: its timings, and ratios between them (``label -> value``)."""

    name: str
    description: str
    timings: list[Timing] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timings"] = [{**asdict(t), "rate": t.rate} for t in self.timings]
        return out


def measure(name: str, fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, work: float | None = None,
            unit: str | None = None, budget_s: float = 10.0) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls (fewer if over ``budget_s``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return Timing(name, statistics.median(times), len(times), work, unit)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
