"""Benchmark of ADAPT's fovea similarity kernel (:mod:`xmrbench.core.sim.adapt_fovea`).

Random unit-norm regions ``(N_img, 36, d)`` and words ``(N_txt, 18, d)`` (caption
lengths 6..18, about 12 words), with each caption's and each image's ``gamma``,
``beta`` (standard normal) and target (its mean position, normalised); fovea
temperature 10 (the release's Flickr30K setting). Sizes: ``--full`` 1,000 images x
5,000 captions at d = 1024, ``--quick`` 50 x 250 at d = 256. Two uses of the kernel:

- ADAPT-T2I: values = the images' regions, queries = the captions;
- ADAPT-I2T: values = the captions' words (ragged lengths), queries = the images.

Reported for each: the time; its floor, the ``fovea_work`` exponentials over the valid
rows at this machine's exp rate (the ``machine`` benchmark's ``exp`` timing, measured
in the same run), and their ratio; the time relative to SCAN t-i (``scan_sims`` with
its defaults) on the same regions and words; the peak memory beyond the inputs against
the stated bound ``block budget + s * N_v * N_q``. On a GPU the ``exp`` timing streams
a 1 GiB buffer (256 MiB with ``--quick``) after half a second of work that lifts the
clocks from idle: an elementwise exp is memory-bound there, so the floor is the time to
pass the exponentials through memory once, which binds any kernel that materialises
them. The kernels run in a fresh child process (``python -m xmrbench.bench.adapt``),
whose resident-set high-water mark is reset before each call (on a GPU:
``torch.cuda.max_memory_allocated``). Numbers only: nothing here asserts a time.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from xmrbench.bench.attention import _reset_peak_rss, _status_bytes
from xmrbench.bench.harness import BenchResult, Ceilings, KernelRecord, Timing, sync
from xmrbench.bench.mining import _trim_heap
from xmrbench.core.sim.adapt_fovea import DEFAULT_BUDGET, fovea_sims, fovea_sims_reference, fovea_work
from xmrbench.core.sim.cross_attention import CPU_BLOCK_BYTES, block_workers, scan_sims

REGIONS = 36
MAX_WORDS = 18
MIN_WORDS = 6
LAM = 10.0
QUICK = (50, 250, 256)  # images, captions, d
FULL = (1000, 5000, 1024)
CASES = ("ADAPT-T2I", "ADAPT-I2T", "SCAN t-i")
CHECK_VALUES, CHECK_QUERIES = 3, 4  # the subset checked against the reference


def adapt_inputs(n_img: int, n_txt: int, dim: int, *, device: torch.device | str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Regions ``img (n_img, 36, dim)``, words ``words (n_txt, 18, dim)`` with ``lengths``,
    and the ``gamma``, ``beta``, ``target`` rows ``(n, dim)`` of the captions (``cap_*``)
    and of the images (``img_*``)."""
    gen = torch.Generator().manual_seed(seed)
    normalize = torch.nn.functional.normalize
    img = normalize(torch.randn(n_img, REGIONS, dim, generator=gen), dim=-1)
    words = normalize(torch.randn(n_txt, MAX_WORDS, dim, generator=gen), dim=-1)
    lengths = torch.randint(MIN_WORDS, MAX_WORDS + 1, (n_txt,), generator=gen)
    valid = (torch.arange(MAX_WORDS)[None, :] < lengths[:, None])[..., None]
    out = {
        "img": img, "words": words, "lengths": lengths,
        "cap_gamma": torch.randn(n_txt, dim, generator=gen), "cap_beta": torch.randn(n_txt, dim, generator=gen),
        "cap_target": normalize((words * valid).sum(1), dim=-1),
        "img_gamma": torch.randn(n_img, dim, generator=gen), "img_beta": torch.randn(n_img, dim, generator=gen),
        "img_target": normalize(img.mean(1), dim=-1),
    }
    return {k: v.to(device) for k, v in out.items()}


def bench_calls(x: dict[str, torch.Tensor], *, budget_bytes: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The three timed calls on inputs from :func:`adapt_inputs`, by case name."""
    return {
        "ADAPT-T2I": lambda: fovea_sims(x["img"], None, x["cap_gamma"], x["cap_beta"], x["cap_target"], LAM,
                                        budget_bytes=budget_bytes),
        "ADAPT-I2T": lambda: fovea_sims(x["words"], x["lengths"], x["img_gamma"], x["img_beta"], x["img_target"], LAM,
                                        budget_bytes=budget_bytes),
        "SCAN t-i": lambda: scan_sims(x["img"], x["words"], x["lengths"]),
    }


def _subset(x: dict[str, torch.Tensor], n_img: int, n_txt: int) -> dict[str, torch.Tensor]:
    cap = ("words", "lengths", "cap_gamma", "cap_beta", "cap_target")
    return {k: v[:n_txt] if k in cap else v[:n_img] for k, v in x.items()}


def _extra_bytes(dev: torch.device, base: int, peak_reset: bool) -> int:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) - base
    if peak_reset:
        return _status_bytes("VmHWM") - base
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def run_probe(n_img: int, n_txt: int, dim: int, budget_bytes: int, device: str, repeats: int) -> dict[str, Any]:
    """In this process: time each case and measure its peak memory beyond the inputs.

    Each case first runs once with the memory high-water mark reset just before the call
    (after a warm-up on a tiny subset, so that code pages and thread pools are in the
    base), then ``repeats - 1`` more times; ``seconds`` is the median of all runs. Meant
    to run in a fresh process (see :func:`adapt`).
    """
    dev = torch.device(device)
    x = adapt_inputs(n_img, n_txt, dim, device=dev, seed=1)
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    with torch.no_grad():
        for fn in bench_calls(_subset(x, 2, 3), budget_bytes=budget_bytes).values():
            fn()
        for case, fn in bench_calls(x, budget_bytes=budget_bytes).items():
            gc.collect()
            _trim_heap()
            sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base, peak_reset = torch.cuda.memory_allocated(dev), True
            else:
                peak_reset = _reset_peak_rss()
                base = _status_bytes("VmRSS")
            times = []
            t0 = time.perf_counter()
            sims = fn()
            sync(dev)
            times.append(time.perf_counter() - t0)
            extra = _extra_bytes(dev, base, peak_reset)
            finite = bool(torch.isfinite(sims).all())
            del sims
            for _ in range(repeats - 1):
                t0 = time.perf_counter()
                fn()
                sync(dev)
                times.append(time.perf_counter() - t0)
            out[case] = {"seconds": statistics.median(times), "repeats": len(times), "extra_bytes": float(extra),
                         "finite": finite}
        small = _subset(x, CHECK_QUERIES, CHECK_QUERIES)
        for case, (vals, lens, prefix) in {
            "ADAPT-T2I": (small["img"][:CHECK_VALUES], None, "cap"),
            "ADAPT-I2T": (small["words"][:CHECK_VALUES], small["lengths"][:CHECK_VALUES], "img"),
        }.items():
            q = [small[f"{prefix}_{k}"] for k in ("gamma", "beta", "target")]
            fast = fovea_sims(vals, lens, *q, LAM, budget_bytes=budget_bytes)
            ref = fovea_sims_reference(vals.double(), lens, *(t.double() for t in q), LAM)
            out[case]["max_abs_diff_to_reference"] = float((fast.double() - ref).abs().max())
    out["valid_words"] = int(x["lengths"].sum())
    return out


def _child(n_img: int, n_txt: int, dim: int, budget_bytes: int, device: str, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "xmrbench.bench.adapt", *map(str, (n_img, n_txt, dim, budget_bytes, device, repeats))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"adapt benchmark child failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_bound_bytes(n_values: int, n_queries: int, *, block_bytes: int, elem_bytes: int = 4) -> int:
    """The stated bound on memory beyond the inputs: the blocks alive at once and the output."""
    return block_bytes + elem_bytes * n_values * n_queries


def adapt(device: torch.device, *, quick: bool, ceilings: Ceilings) -> BenchResult:
    """ADAPT's fovea kernel, both uses: time against the exp floor and SCAN t-i, peak memory against its bound."""
    n_img, n_txt, dim = QUICK if quick else FULL
    dev = "cuda" if getattr(device, "type", str(device)) == "cuda" else "cpu"
    res = BenchResult("adapt", f"ADAPT fovea similarity (lambda = {LAM:g}): {n_img:,} images (36 regions) x "
                               f"{n_txt:,} captions ({MIN_WORDS}-{MAX_WORDS} words), d = {dim}")
    st = _child(n_img, n_txt, dim, DEFAULT_BUDGET, dev, 3 if quick else 1)
    block_bytes = min(DEFAULT_BUDGET, CPU_BLOCK_BYTES) if dev == "cpu" else DEFAULT_BUDGET
    at_once = block_workers(DEFAULT_BUDGET, block_bytes, st["threads"]) if dev == "cpu" else 1  # the child's
    work = {
        "ADAPT-T2I": fovea_work(n_img, n_txt, REGIONS, dim),
        "ADAPT-I2T": fovea_work(1, n_img, st["valid_words"], dim),
    }
    shapes = {"ADAPT-T2I": (n_img, n_txt), "ADAPT-I2T": (n_txt, n_img)}
    scan = st["SCAN t-i"]
    res.timings.append(Timing(f"SCAN t-i LSE, scan_sims defaults ({n_img} x {n_txt}, d={dim})", scan["seconds"],
                              scan["repeats"], float(n_img * n_txt), "pair"))
    peaks = []
    for case in ("ADAPT-T2I", "ADAPT-I2T"):
        got = st[case]
        n_v, n_q = shapes[case]
        res.timings.append(Timing(f"{case}, fovea_sims ({n_v} values x {n_q} queries, d={dim})", got["seconds"],
                                  got["repeats"], float(work[case]), "exp"))
        floor = ceilings.floor(float(work[case]), "exp")
        bound = memory_bound_bytes(n_v, n_q, block_bytes=block_bytes * at_once)
        res.ratios[f"{case}: exp floor (s)"] = floor
        res.ratios[f"{case}: time / exp floor"] = got["seconds"] / floor
        if got["seconds"] < floor:
            res.notes.append(f"{case}: faster than its floor, so the exp timing understates this device's exp rate "
                             "and the floor is not a bound here")
        res.ratios[f"{case}: time / SCAN t-i time"] = got["seconds"] / scan["seconds"]
        res.ratios[f"{case}: peak memory beyond the inputs (MiB)"] = got["extra_bytes"] / 2**20
        res.ratios[f"{case}: peak memory / stated bound"] = got["extra_bytes"] / bound
        peaks.append(got["extra_bytes"])
        res.kernels.append(KernelRecord(
            case.lower(), f"{n_img}x{n_txt}, R={REGIONS}, d={dim}", got["seconds"], float(work[case]), "exp", floor,
            "the fovea_work exponentials at the exp rate", peak_extra_bytes=got["extra_bytes"],
            targets={"ratio_to_floor": 1.5},
        ))
        res.notes.append(f"{case}: max abs difference to the reference on {CHECK_VALUES} x {CHECK_QUERIES} pairs "
                         f"{got['max_abs_diff_to_reference']:.1e}; all scores finite: {got['finite']}")
    res.peak_rss_mb = max(peaks) / 2**20
    res.notes.append(
        "memory bound beyond the inputs: block budget + 4 N_v N_q bytes; one block holds at most "
        "4 (k b_v b_q n_b D + 2 b_v b_q D + 5 b_v b_q + b_v (2 n_b D + n_b + 2 D + 3) + b_q (D + 1)) bytes (k = 1), "
        f"blocks of {block_bytes / 2**20:.0f} MiB on this device, {at_once} at once"
    )
    res.notes.append(f"{st['threads']} torch threads on {dev}; exp floor at {ceilings.exp:.3g} exp/s "
                     f"(the machine benchmark's exp timing); memory measured as "
                     f"{'peak allocated' if dev == 'cuda' else 'peak resident set'} in a child process")
    return res


if __name__ == "__main__":  # the child: N_IMG N_TXT DIM BUDGET_BYTES DEVICE REPEATS
    args = sys.argv[1:]
    print(json.dumps(run_probe(int(args[0]), int(args[1]), int(args[2]), int(args[3]), args[4], int(args[5]))))
