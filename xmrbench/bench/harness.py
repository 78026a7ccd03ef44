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
    kernels: list[KernelRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timings"] = [{**asdict(t), "rate": t.rate} for t in self.timings]
        out["kernels"] = [k.to_dict() for k in self.kernels]
        return out


@dataclass(frozen=True)
class Ceilings:
    """What this machine does per second, measured in the same run as the kernels:
    fp32 GEMM FLOPs, elementwise exponentials, and bytes moved by a large copy."""

    flop: float
    exp: float
    byte: float

    def floor(self, work: float, unit: str) -> float:
        """Seconds ``work`` of ``unit`` (``flop``, ``exp`` or ``byte``) takes at this machine's rate."""
        rate = {"flop": self.flop, "exp": self.exp, "byte": self.byte}.get(unit)
        if rate is None:
            raise ValueError(f"no ceiling for work counted in {unit!r} (flop, exp or byte)")
        return work / rate

    @classmethod
    def from_timings(cls, timings: list[Timing]) -> Ceilings:
        rates = {t.unit: t.rate for t in timings if t.unit and t.rate}
        return cls(flop=rates["flop"], exp=rates["exp"], byte=rates["byte"])

    def to_dict(self) -> dict[str, float]:
        return {"gemm_flop_per_s": self.flop, "exp_per_s": self.exp, "copy_byte_per_s": self.byte}


@dataclass
class KernelRecord:
    """One kernel at one size: its time, its floor (the work it cannot avoid at the
    machine's measured rate), a peer's way of computing the same thing, and memory.

    ``floor_basis`` says what the floor counts (docs/bench.md states it per kernel);
    ``peer`` names the peer computation ``peer_seconds`` timed; ``targets`` holds the
    stated targets, ``{"ratio_to_floor": max, "speedup_vs_peer": min, "peak_extra_bytes": max}``
    (any of them).
    """

    kernel: str
    size: str
    seconds: float
    work: float | None = None
    unit: str | None = None
    floor_seconds: float | None = None
    floor_basis: str | None = None
    peer_seconds: float | None = None
    peer: str | None = None
    peak_extra_bytes: float | None = None
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def ratio_to_floor(self) -> float | None:
        return None if not self.floor_seconds else self.seconds / self.floor_seconds

    @property
    def speedup_vs_peer(self) -> float | None:
        return None if self.peer_seconds is None else self.peer_seconds / self.seconds

    def verdicts(self) -> dict[str, bool]:
        """Each stated target: met or not (only for the values measured)."""
        got = {"ratio_to_floor": self.ratio_to_floor, "speedup_vs_peer": self.speedup_vs_peer,
               "peak_extra_bytes": self.peak_extra_bytes}
        out = {}
        for key, bound in self.targets.items():
            value = got.get(key)
            if value is not None:
                out[key] = value >= bound if key == "speedup_vs_peer" else value <= bound
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio_to_floor": self.ratio_to_floor, "speedup_vs_peer": self.speedup_vs_peer,
                "targets_met": self.verdicts()}


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
