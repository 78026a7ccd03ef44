"""How many CPU threads a run uses, and how they wait (``--threads``; docs/threads.md).

Two things make training on a shared CPU collapse, and both are settled here before
torch loads its OpenMP runtime:

- **Spin-waiting.** OpenMP's default lets a thread that reaches the end of a parallel
  region spin for a while before it sleeps. When another process holds one of the
  cores, the partner thread of every region may be descheduled, and each of the many
  small regions of a training step then costs a scheduler time slice. xmrbench sets
  ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once) unless the user has set it.
- **Oversubscription.** ``os.cpu_count()`` counts the machine's CPUs, not the ones this
  process may use: a CPU affinity mask (``taskset``, a batch scheduler) or a cgroup CPU
  quota (a container) can allow fewer. The default thread count is what this process
  may really use.

The thread count changes the summation order of the CPU kernels, so it is recorded in
every result (``torch_threads``) and results agree bit for bit only at equal counts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Set before torch loads, unless the user has set it: sleep at barriers instead of spinning.
OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare_environment() -> None:
    """Set the OpenMP defaults in this process's environment, unless the user has: the wait
    policy, and as many threads as this process may use CPUs. Effective for torch only
    before it is imported (the command line calls this first); child processes inherit it."""
    for key, value in OMP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu/cpu.cfs_quota_us``) quota, or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if the user set it, else every CPU this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cpus()


def setup_threads(threads: int | None = None) -> int:
    """Use ``threads`` torch threads (default: :func:`default_threads`); returns the count."""
    prepare_environment()
    import torch

    n = threads if threads is not None else default_threads()
    if n < 1:
        raise ValueError("threads must be >= 1")
    torch.set_num_threads(n)
    return n
