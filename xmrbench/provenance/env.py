"""The environment a result was produced in: versions, hardware, code revision."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import xmrbench


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), or None."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _cpu_flags() -> str | None:
    """A short hash of the CPU's instruction-set flags (/proc/cpuinfo), or None where unknown.

    Two machines with the same CPU model name can expose different instruction sets
    (a hypervisor may hide AVX-512), and BLAS kernels dispatch on them.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                return hashlib.sha256(flags.encode()).hexdigest()[:12]
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _numeric_libraries() -> dict[str, Any]:
    """The numeric builds the numbers depend on: torch's build (its BLAS, oneDNN and
    compiler; a hash of ``torch.__config__.show()``), the CPU kernels torch dispatches
    to, and numpy's BLAS. Read from the builds, not from what happens to be loaded."""
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        numpy_blas = f"{blas.get('name')} {blas.get('version')}"
    except (AttributeError, KeyError, TypeError):
        numpy_blas = None
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_build": hashlib.sha256(torch.__config__.show().encode()).hexdigest()[:12],
        "numpy_blas": numpy_blas,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions and hardware, recorded in every result and printed by ``xmrbench env``."""
    dev = torch.device(device) if device is not None else None
    info: dict[str, Any] = {
        "xmrbench": xmrbench.__version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        **_numeric_libraries(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": str(dev) if dev is not None else None,
    }
    if dev is not None and dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def machine_label(env: dict[str, Any]) -> str:
    """A short one-line description of the hardware, for report headers."""
    if env.get("gpu"):
        return f"{env['gpu']} (CUDA {env.get('cuda')})"
    return f"{env.get('cpu', '?')}, {env.get('torch_threads', '?')} threads"
