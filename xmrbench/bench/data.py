"""Loader benchmark: random training batches from a large HDF5 file vs a memory-mapped .npy.

A region-feature file of ``n`` images x 36 x 2048 float32 (COCO's layout; 295 KB per
image) is generated on the fly into a temporary directory, once as
``train_ims.h5`` (one image per HDF5 chunk, our writer's layout) and once as
``train_ims.npy``, each next to a ``train_caps.txt``. Each file is then read by a
fresh child process through the loader a training run uses (``load_precomp`` ->
``Split.image_features("regions", batch)``): random batches of 128 images, from a
cold page cache where the OS allows it (``posix_fadvise(DONTNEED)`` after writing).
The child reports images/s and its peak resident set size, so the two readers'
memory use is measured separately. Sizes: ``--quick`` 1,500 images (0.44 GB per
file), ``--full`` 9,000 images (2.65 GB per file).

What it shows: the HDF5 reader's peak RSS stays at a few batches whatever the file
size, while a memory map's RSS grows with the pages it has touched (they are
file-backed and reclaimable, but they count); and what random access through
h5py costs relative to a memory map.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REGIONS, DIM, BATCH = 36, 2048, 128
QUICK_IMAGES, FULL_IMAGES = 1500, 9000
QUICK_BATCHES, FULL_BATCHES = 12, 30
_BLOCK = 256


def _evict(path: Path) -> bool:
    """Drop ``path``'s pages from the page cache (best effort); True if the OS took the hint."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def write_bench_files(root: Path, n_images: int, *, seed: int = 0) -> tuple[Path, Path]:
    """Two precomp directories (``h5/`` and ``npy/``) holding the same random region features."""
    from xmrbench.data.hdf5 import write_h5_features

    h5_dir, npy_dir = root / "h5", root / "npy"
    h5_dir.mkdir(parents=True)
    npy_dir.mkdir(parents=True)
    caps = "".join(f"caption {j % 5} of image {j // 5}\n" for j in range(5 * n_images))
    for d in (h5_dir, npy_dir):
        (d / "train_caps.txt").write_text(caps, encoding="utf-8")
    npy_path = npy_dir / "train_ims.npy"
    arr = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.float32, shape=(n_images, REGIONS, DIM))
    rng = np.random.default_rng(seed)
    for lo in range(0, n_images, _BLOCK):
        hi = min(lo + _BLOCK, n_images)
        arr[lo:hi] = rng.random((hi - lo, REGIONS, DIM), dtype=np.float32)
    arr.flush()
    del arr
    src = np.load(npy_path, mmap_mode="r", allow_pickle=False)
    write_h5_features(h5_dir / "train_ims.h5", src)
    del src
    return h5_dir, npy_dir


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB, None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak_rss() -> float:
    """Reset this process's RSS high-water mark where Linux allows it; returns the RSS now.

    (``getrusage``'s ``ru_maxrss`` survives ``exec`` and would report the parent's peak.)
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    now = _status_mb("VmRSS")
    return now if now is not None else _peak_rss_mb()


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_batches(root: str, n_batches: int, batch: int = BATCH, seed: int = 1) -> dict[str, float]:
    """In this process: random batches through the training loader; throughput and RSS.

    Meant to run in a fresh child process (see :func:`data`), which makes its peak RSS
    this reader's alone.
    """
    from xmrbench.data.precomp import load_precomp

    base_rss = _reset_peak_rss()
    split = load_precomp(root, check=False).split("train")
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n_batches):
        index = rng.choice(split.n_images, size=batch, replace=False)
        t0 = time.perf_counter()
        feats = split.image_features("regions", index)
        times.append(time.perf_counter() - t0)
        del feats
    peak = _peak_rss_mb()
    return {"median_s": float(np.median(times)), "total_s": float(np.sum(times)), "batches": n_batches,
            "peak_rss_mb": peak, "base_rss_mb": base_rss}


def _child(root: Path, n_batches: int, batch: int) -> dict[str, float]:
    code = ("import json, sys; from xmrbench.bench.data import read_batches; "
            "print(json.dumps(read_batches(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, str(root), str(n_batches), str(batch)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loader benchmark child failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def data(device: Any, *, quick: bool, ceilings: Any = None) -> Any:
    """Loader throughput (images/s of random batches) and peak RSS: HDF5 vs memory-mapped .npy.

    Returns a :class:`~xmrbench.bench.harness.BenchResult`. (This module imports no torch at
    load time, so the reader child processes start light.)
    """
    from xmrbench.bench.harness import BenchResult, Timing

    del device  # a CPU-side benchmark
    n_images = QUICK_IMAGES if quick else FULL_IMAGES
    n_batches = QUICK_BATCHES if quick else FULL_BATCHES
    gb = n_images * REGIONS * DIM * 4 / 1e9
    res = BenchResult("data", f"random batches of {BATCH} from {n_images:,} x {REGIONS} x {DIM} float32 "
                              f"region features ({gb:.2f} GB per file)")
    with tempfile.TemporaryDirectory(prefix="xmrbench-bench-data-") as tmp:
        t0 = time.perf_counter()
        h5_dir, npy_dir = write_bench_files(Path(tmp), n_images)
        res.notes.append(f"wrote both files in {time.perf_counter() - t0:.1f} s to {tmp}")
        cold = all(_evict(p) for p in (h5_dir / "train_ims.h5", npy_dir / "train_ims.npy"))
        res.notes.append("page cache: " + ("evicted after writing (cold reads)" if cold else
                                           "could not be evicted (reads may be served from memory)"))
        stats = {"HDF5, one image per chunk": _child(h5_dir, n_batches, BATCH),
                 "memory-mapped .npy": _child(npy_dir, n_batches, BATCH)}
    for name, st in stats.items():
        res.timings.append(Timing(f"{name}: batch of {BATCH}", st["median_s"], int(st["batches"]),
                                  work=float(BATCH), unit="image"))
    (h5_name, h5), (npy_name, npy) = stats.items()
    res.ratios["HDF5 / memory-map throughput (images/s)"] = npy["median_s"] / h5["median_s"]
    res.ratios["peak RSS of the HDF5 reader (MB)"] = h5["peak_rss_mb"]
    res.ratios["peak RSS of the memory-map reader (MB)"] = npy["peak_rss_mb"]
    res.ratios["peak RSS above start-up, HDF5 / memory-map"] = (
        (h5["peak_rss_mb"] - h5["base_rss_mb"]) / max(npy["peak_rss_mb"] - npy["base_rss_mb"], 1e-9)
    )
    res.notes.append(f"child start-up RSS (imports only): {h5['base_rss_mb']:.0f} MB; one batch is "
                     f"{BATCH * REGIONS * DIM * 4 / 1e6:.0f} MB; {n_batches} batches touch "
                     f"~{min(n_batches * BATCH, n_images) * REGIONS * DIM * 4 / 1e6:.0f} MB of each file")
    res.peak_rss_mb = max(h5["peak_rss_mb"], npy["peak_rss_mb"])
    return res
