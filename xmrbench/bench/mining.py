"""Offline mining benchmark: both candidate lists in one pass, against the GEMM floor.

Random L2-normalised embeddings (d = 2048, as the VSRN teacher embeds) stand in for a
trained model's: ``--quick`` 30,000 captions x 6,000 images at the release widths (2,000
captions per image, 400 images per caption); ``--full`` 150,000 captions x 30,000 images
at the release widths (about Flickr30K's 29K x 145K) and MS-COCO's training split,
566,435 captions x 113,287 images, at AOQ's h (300 captions, 60 images). Caption ``j``
belongs to image ``j // 5``. :func:`~xmrbench.core.mining.mine_candidates` mines over
tiles of dot products ``img[rows] @ txt[cols].T``.

Reported:

- the mining time and its floor: the ``2 N_img N_txt d`` FLOPs of the similarity
  matrix at the GEMM rate measured on the same tile shape in the same process, and
  their ratio (1 would mean the top-k bookkeeping were free); a tile's product runs at
  about the rate of a large square GEMM, so this floor is the machine's;
- the peak memory beyond the embeddings, *measured*: the mining runs in a fresh child
  process, which allocates the embeddings, resets its resident-set high-water mark
  (``/proc/self/clear_refs``; after a warm-up on a tiny problem, so that code pages
  and the GEMM's buffers are in the base, and after handing the allocator's cached
  free memory back), reads its RSS, mines, and reads the
  high-water mark again; the difference sits next to
  :func:`~xmrbench.core.mining.mining_memory_bound`
  (on a GPU: ``torch.cuda.max_memory_allocated`` less the memory allocated before),
  against 2 GB at Flickr30K's scale and 4 GB at MS-COCO's;
- the peer: faiss-cpu's exact inner-product search (``IndexFlatIP``, the optional
  ``faiss`` extra) producing both lists on the same embeddings in a child process of its
  own, two searches (one per direction) with the own captions / image dropped; at the
  full sizes each search is timed on its first 6,000 image or 30,000 caption queries and
  scaled to all of them (an exact search costs the same per query).

Numbers only: nothing here asserts a time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

DIM = 2048
CAPTIONS_PER_IMAGE = 5
K_TEXTS, K_IMAGES = 2000, 400
QUICK_CAPTIONS, QUICK_IMAGES = 30_000, 6_000
FULL_CAPTIONS, FULL_IMAGES = 150_000, 30_000
COCO_CAPTIONS, COCO_IMAGES, COCO_H = 566_435, 113_287, 300
#: faiss is timed on at most this many image queries (and five times as many captions), scaled
FAISS_QUERIES = 6_000
GEMM_REPEATS = 3


def _embeddings(n: int, dim: int, gen: Any, device: Any) -> Any:
    """``(n, dim)`` float32 rows drawn from N(0, 1) and L2-normalised, filled in slices
    (so that drawing them never takes more memory than a slice beyond the result)."""
    import torch

    out = torch.empty((n, dim), dtype=torch.float32, device=device)
    for lo in range(0, n, 4096):
        rows = torch.randn(min(4096, n - lo), dim, generator=gen)
        out[lo : lo + len(rows)] = torch.nn.functional.normalize(rows, dim=1).to(device)
    return out


def _trim_heap() -> None:
    """Hand the C allocator's cached free memory back to the system (glibc; best effort), so
    that the base RSS holds no freed memory the mining would then reuse unseen."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_mining(n_captions: int, n_images: int, dim: int, k_texts: int, k_images: int,
               device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """In this process: mine random embeddings once; seconds, the GEMM rate and memory.

    Meant to run in a fresh child process (see :func:`mining`), so that its memory
    high-water mark is the mining's alone.
    """
    import gc

    import torch

    from xmrbench.bench.data import _peak_rss_mb, _reset_peak_rss
    from xmrbench.core.mining import MINING_BLOCK_IMAGES, MINING_CHUNK_CAPTIONS, mine_candidates

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    img = _embeddings(n_images, dim, gen, dev)
    txt = _embeddings(n_captions, dim, gen, dev)
    caption_image = torch.arange(n_captions) // CAPTIONS_PER_IMAGE
    block, chunk = MINING_BLOCK_IMAGES, MINING_CHUNK_CAPTIONS

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    # a warm-up on a tiny problem first: the code pages of every kernel and the GEMM's
    # buffers are then in the base, and the difference is the mining's data
    small = min(n_images, 64)
    small_txt = int((caption_image < small).sum())
    mine_candidates(lambda rows, cols: img[rows] @ txt[cols].T, n_images=small,
                    caption_image=caption_image[:small_txt], k_texts=min(k_texts, small_txt - CAPTIONS_PER_IMAGE),
                    k_images=min(k_images, small - 1), block_images=block)
    gc.collect()
    _trim_heap()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base_mb = torch.cuda.memory_allocated(dev) / 2**20
    base_rss_mb = _reset_peak_rss()
    t0 = time.perf_counter()
    i2t, t2i = mine_candidates(lambda rows, cols: img[rows] @ txt[cols].T, n_images=n_images,
                               caption_image=caption_image, k_texts=k_texts, k_images=k_images, block_images=block,
                               chunk_captions=chunk)
    sync()
    seconds = time.perf_counter() - t0
    peak_rss_mb = _peak_rss_mb()
    peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 - base_mb if cuda else peak_rss_mb - base_rss_mb
    shapes = [tuple(i2t.shape), tuple(t2i.shape)]
    del i2t, t2i
    rows, cols = min(block, n_images), min(chunk, n_captions)
    times = []
    for _ in range(GEMM_REPEATS + 1):  # the first is a warm-up
        t = time.perf_counter()
        out = img[:rows] @ txt[:cols].T
        sync()
        times.append(time.perf_counter() - t)
        del out
    gemm_s = statistics.median(times[1:])
    return {"seconds": seconds, "gemm_tile_s": gemm_s, "gemm_rate": 2.0 * rows * cols * dim / gemm_s,
            "block": block, "chunk": chunk, "tile": [rows, cols], "peak_mb": peak_mb, "peak_rss_mb": peak_rss_mb,
            "base_rss_mb": base_rss_mb, "threads": torch.get_num_threads(), "shapes": shapes,
            "memory": "GPU allocated" if cuda else "RSS"}


def faiss_lists(img: Any, txt: Any, caption_image: Any, k_texts: int, k_images: int,
                directions: tuple[str, ...] = ("i2t", "t2i")) -> tuple[Any, Any]:
    """Both candidate lists by faiss-cpu's exact inner-product search (``IndexFlatIP``):
    every image searches the captions for its ``k_texts`` best plus its own captions,
    every caption the images for its ``k_images`` best plus its own image, and the own
    ones are dropped. Two searches, so twice the dot products of the one-pass miner.
    ``img``, ``txt``: float32 numpy arrays (the queries of a direction may be the first
    rows only: ``img`` for i2t, ``txt`` with its ``caption_image`` for t2i); returns int32
    arrays in the miner's layout, None for a direction left out of ``directions``."""
    import faiss
    import numpy as np

    i2t = t2i = None
    if "i2t" in directions:
        by_txt = faiss.IndexFlatIP(txt.shape[1])
        by_txt.add(txt)
        _, found = by_txt.search(img, k_texts + int(np.bincount(caption_image).max()))
        del by_txt
        keep = caption_image[found] != np.arange(len(img))[:, None]
        i2t = np.stack([row[mask][:k_texts] for row, mask in zip(found, keep)]).astype(np.int32)
    if "t2i" in directions:
        by_img = faiss.IndexFlatIP(img.shape[1])
        by_img.add(img)
        _, found = by_img.search(txt, k_images + 1)
        keep = found != caption_image[:, None]
        t2i = np.stack([row[mask][:k_images] for row, mask in zip(found, keep)]).astype(np.int32)
    return i2t, t2i


def run_faiss(n_captions: int, n_images: int, dim: int, k_texts: int, k_images: int, max_queries: int = 0,
              seed: int = 0) -> dict[str, Any]:
    """In this process: faiss-cpu on the same embeddings as :func:`run_mining` (same seed);
    seconds, or ``{"missing": ...}`` when faiss is not installed. With ``max_queries``, each
    search runs for at most that many queries (against the whole database) and its time
    is scaled to every query: exact search costs the same per query."""
    try:
        import faiss
    except ImportError:
        return {"missing": "faiss-cpu is not installed (pip install -e '.[faiss]')"}
    import torch

    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    img = _embeddings(n_images, dim, gen, "cpu").numpy()
    txt = _embeddings(n_captions, dim, gen, "cpu").numpy()
    caption_image = (torch.arange(n_captions) // CAPTIONS_PER_IMAGE).numpy()
    q_img = min(n_images, max_queries or n_images)
    q_txt = min(n_captions, (max_queries or n_captions) * CAPTIONS_PER_IMAGE)
    t0 = time.perf_counter()
    i2t, _ = faiss_lists(img[:q_img], txt, caption_image, k_texts, k_images, directions=("i2t",))
    i2t_s = (time.perf_counter() - t0) * n_images / q_img
    t0 = time.perf_counter()
    _, t2i = faiss_lists(img, txt[:q_txt], caption_image[:q_txt], k_texts, k_images, directions=("t2i",))
    t2i_s = (time.perf_counter() - t0) * n_captions / q_txt
    return {"seconds": i2t_s + t2i_s, "threads": threads, "version": faiss.__version__,
            "queries": [q_img, q_txt], "shapes": [list(i2t.shape), list(t2i.shape)]}


def _child(n_captions: int, n_images: int, dim: int, k_texts: int, k_images: int, device: str,
           fn: str = "run_mining", max_queries: int = 0) -> dict[str, Any]:
    call = ("run_mining(*map(int, a[:5]), device=a[5])" if fn == "run_mining"
            else "run_faiss(*map(int, a[:5]), max_queries=int(a[6]))")
    code = (f"import json, sys; from xmrbench.bench.mining import {fn}; "
            f"a = sys.argv[1:]; print(json.dumps({call}))")
    args = [str(v) for v in (n_captions, n_images, dim, k_texts, k_images)] + [device, str(max_queries)]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mining benchmark child failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cases(quick: bool) -> list[tuple[int, int, int, int, str]]:
    """(captions, images, k_texts, k_images, what) of each size the benchmark mines."""
    if quick:
        return [(QUICK_CAPTIONS, QUICK_IMAGES, K_TEXTS, K_IMAGES, "the release widths")]
    return [(FULL_CAPTIONS, FULL_IMAGES, K_TEXTS, K_IMAGES, "the release widths, Flickr30K's scale"),
            (COCO_CAPTIONS, COCO_IMAGES, COCO_H, COCO_H // 5, "MS-COCO's training split at AOQ's h")]


def mining(device: Any, *, quick: bool, ceilings: Any = None) -> Any:
    """One-pass mining of both candidate lists: time against the GEMM floor and against
    faiss-cpu's exact search, measured peak memory against
    :func:`~xmrbench.core.mining.mining_memory_bound`.

    Returns a :class:`~xmrbench.bench.harness.BenchResult`. (This module imports no torch at
    load time, so the child process starts light.)
    """
    from xmrbench.bench.harness import BenchResult

    dev = "cuda" if getattr(device, "type", str(device)) == "cuda" else "cpu"
    cases = _cases(quick)
    res = BenchResult("mining", "offline candidate lists, both from one pass, d = 2048: " + "; ".join(
        f"{min(kt, nt - CAPTIONS_PER_IMAGE)} captions per image and {min(ki, ni - 1)} images per caption of "
        f"{ni:,} images x {nt:,} captions ({what})" for nt, ni, kt, ki, what in cases))
    for n_txt, n_img, k_texts, k_images, _ in cases:
        _mine_one(res, n_txt, n_img, min(k_texts, n_txt - CAPTIONS_PER_IMAGE), min(k_images, n_img - 1), dev,
                  label="" if len(cases) == 1 else f"{n_img:,} x {n_txt:,}: ")
    return res


def _mine_one(res: Any, n_txt: int, n_img: int, k_texts: int, k_images: int, dev: str, *, label: str) -> None:
    from xmrbench.bench.harness import KernelRecord, Timing
    from xmrbench.core.mining import mining_memory_bound

    st = _child(n_txt, n_img, DIM, k_texts, k_images, dev)
    flops = 2.0 * n_img * n_txt * DIM
    floor_s = flops / st["gemm_rate"]
    res.timings.append(Timing(f"{label}mine_candidates (dot-product tiles included)", st["seconds"], 1, work=flops,
                              unit="flop"))
    rows, cols = st["tile"]
    res.timings.append(Timing(f"{label}GEMM of one tile ({rows} x {DIM} x {cols})", st["gemm_tile_s"],
                              GEMM_REPEATS, work=2.0 * rows * cols * DIM, unit="flop"))
    bound_mb = mining_memory_bound(n_txt, k_texts, k_images, st["block"], 4, n_images=n_img,
                                   chunk_captions=st["chunk"], threads=st["threads"]) / 2**20
    res.ratios[f"{label}GEMM floor of the whole matrix (s)"] = floor_s
    res.ratios[f"{label}mining time / GEMM floor"] = st["seconds"] / floor_s
    res.ratios[f"{label}peak memory beyond the embeddings, measured (MiB)"] = st["peak_mb"]
    res.ratios[f"{label}mining_memory_bound (MiB)"] = bound_mb
    res.ratios[f"{label}measured / bound"] = st["peak_mb"] / bound_mb
    res.notes.append(f"{label}{st['threads']} torch threads on {dev}; tiles of {st['block']} images x {st['chunk']} "
                     f"captions; memory measured "
                     f"as {st['memory']} in a child process (RSS there after the embeddings: {st['base_rss_mb']:.0f} MB)")
    res.notes.append(f"{label}results: i2t {tuple(st['shapes'][0])}, t2i {tuple(st['shapes'][1])} int32")
    res.peak_rss_mb = max(res.peak_rss_mb or 0.0, st["peak_rss_mb"])
    peer = _child(n_txt, n_img, DIM, k_texts, k_images, "cpu", fn="run_faiss", max_queries=FAISS_QUERIES) \
        if dev == "cpu" else {"missing": "faiss-cpu is compared on the CPU only"}
    if "missing" in peer:
        res.notes.append(f"{label}no peer: {peer['missing']}")
    else:
        scaled = peer["queries"] != [n_img, n_txt]
        res.timings.append(Timing(f"{label}faiss-cpu {peer['version']} IndexFlatIP, both lists (two exact searches"
                                  + (f"; {peer['queries'][0]:,} and {peer['queries'][1]:,} queries timed, scaled)"
                                     if scaled else ")"), peer["seconds"], 1))
    res.kernels.append(KernelRecord(
        "mining", f"{n_img}x{n_txt}, d={DIM}, top-{k_texts}/top-{k_images}", st["seconds"], flops, "flop", floor_s,
        "2 N_img N_txt d FLOPs at the GEMM rate of one mining tile, measured beside it",
        peer.get("seconds"), None if "missing" in peer else "faiss-cpu exact inner-product search (IndexFlatIP)",
        peak_extra_bytes=st["peak_mb"] * 2**20,
        targets={"ratio_to_floor": 1.3, "speedup_vs_peer": 1.0,
                 "peak_extra_bytes": float((2 if n_txt <= FULL_CAPTIONS else 4) * 2**30)},
    ))
