"""Benchmarks of the hot paths: the machine's limits, similarity kernels, ranking metrics."""

from __future__ import annotations

import time

import numpy as np
import torch

from xmrbench.bench.harness import BenchResult, measure, sync
from xmrbench.core.metrics.retrieval import i2t_ranks, t2i_ranks


def machine(device: torch.device, *, quick: bool) -> BenchResult:
    """What this machine can do: GEMM FLOP/s, memory bandwidth, exp throughput."""
    res = BenchResult("machine", "measured limits the kernels are compared against")
    gpu = device.type == "cuda"
    if gpu:
        _raise_gpu_clocks(device)
    # a GPU needs larger problems than a CPU before launch latency stops dominating
    n = (4096 if quick else 8192) if gpu else (1024 if quick else 2048)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    res.timings.append(measure("gemm fp32", lambda: (a @ b, sync(device)), work=2.0 * n**3, unit="flop"))
    m = ((256 if quick else 1024) if gpu else (16 if quick else 64)) * 1024 * 1024 // 4
    x = torch.randn(m, device=device)
    y = torch.empty_like(x)
    res.timings.append(measure("copy", lambda: (y.copy_(x), sync(device)), work=2.0 * 4 * m, unit="byte"))
    res.timings.append(measure("exp", lambda: (torch.exp(x, out=y), sync(device)), work=float(m), unit="exp"))
    return res


def _raise_gpu_clocks(device: torch.device, seconds: float = 0.5) -> None:
    """Keep the GPU busy for about ``seconds`` so that its clocks leave their idle state
    before anything is timed (an idle GPU's first milliseconds run at a fraction of its
    rate, and the ceilings below would understate it)."""
    a = torch.randn(4096, 4096, device=device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
        sync(device)


def _peer_style_i2t(sims: np.ndarray, cpi: int) -> np.ndarray:
    """The loop most peer repositories use: argsort each row, find the best caption."""
    ranks = np.zeros(sims.shape[0], dtype=np.int64)
    for i in range(sims.shape[0]):
        order = np.argsort(sims[i])[::-1]
        ranks[i] = min(np.where(order == j)[0][0] for j in range(cpi * i, cpi * i + cpi))
    return ranks


def ranking(device: torch.device, *, quick: bool) -> BenchResult:
    """Ranks of a 1K x 5K (or 5K x 25K) similarity matrix: blocked counting vs peer-style argsort loops."""
    n_img = 1000 if quick else 5000
    cpi = 5
    gen = torch.Generator().manual_seed(0)
    sims = torch.randn(n_img, n_img * cpi, generator=gen).to(device)
    res = BenchResult("ranking", f"i2t and t2i ranks of a {n_img} x {n_img * cpi} similarity matrix")
    ours = measure("xmrbench i2t+t2i ranks", lambda: (i2t_ranks(sims), t2i_ranks(sims), sync(device)), repeats=3)
    sub = 200  # the peer loop is slow: time it on a subset of rows and scale
    sims_np = sims[:sub].cpu().numpy()
    peer = measure("peer-style argsort loop (i2t, 200 rows)", lambda: _peer_style_i2t(sims_np, cpi), repeats=1, warmup=0)
    res.timings += [ours, peer]
    peer_i2t_full = peer.seconds * n_img / sub
    res.ratios["i2t+t2i ranks: speed-up over the peer-style i2t loop alone (scaled to all rows)"] = peer_i2t_full / ours.seconds
    return res


def similarity(device: torch.device, *, quick: bool) -> BenchResult:
    """Embedding similarity (one GEMM) against the machine's GEMM rate, and the
    similarity network's blocked per-pair MLP against a per-image loop."""
    from xmrbench.core.models.base import InputDims
    from xmrbench.core.models.two_branch import TwoBranchSimilarity

    n_img = 1000 if quick else 5000
    n_txt, dim = 5 * n_img, 1024
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=gen), dim=1).to(device)
    txt = torch.nn.functional.normalize(torch.randn(n_txt, dim, generator=gen), dim=1).to(device)
    res = BenchResult("similarity", "similarity-matrix kernels")
    flops = 2.0 * n_img * n_txt * dim
    gemm = measure(f"cosine {n_img}x{n_txt}x{dim}", lambda: (img @ txt.T, sync(device)), work=flops, unit="flop")
    peak = machine(device, quick=quick).timings[0]
    res.timings += [gemm, peak]
    res.ratios["cosine kernel: fraction of measured GEMM FLOP/s"] = (gemm.rate or 0) / (peak.rate or 1)

    params = TwoBranchSimilarity.Params(hidden_dim=64, embed_dim=256, fc_dims=(128, 64))
    net = TwoBranchSimilarity(params, InputDims(image_dim=8, vocab_size=4, text_dim=8)).to(device).eval()
    n_i = 100 if quick else 300
    a = torch.randn(n_i, 256, device=device)
    b = torch.randn(5 * n_i, 256, device=device)
    with torch.no_grad():
        blocked = measure("similarity network, blocked", lambda: (net.similarity(a, b), sync(device)), repeats=3)
        looped = measure(
            "similarity network, one image at a time",
            lambda: (torch.stack([net.pair_scores(a[i].expand_as(b), b) for i in range(n_i)]), sync(device)),
            repeats=3,
        )
    res.timings += [blocked, looped]
    res.ratios["similarity network: blocked speed-up over a per-image loop"] = looped.seconds / blocked.seconds
    return res
