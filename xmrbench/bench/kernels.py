"""Benchmarks of the hot paths: the machine's limits, the embedding similarity, the full
evaluation and the similarity network, each as a :class:`KernelRecord` against its floor
(docs/bench.md) and a peer's way of computing it."""

from __future__ import annotations

import time

import numpy as np
import torch

from xmrbench.bench.harness import BenchResult, Ceilings, KernelRecord, Timing, measure, sync
from xmrbench.core.metrics.retrieval import i2t_ranks, retrieval_metrics


def machine(device: torch.device, *, quick: bool, ceilings: Ceilings | None = None) -> BenchResult:
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


def peer_i2t_ranks(img: np.ndarray, txt: np.ndarray, rows: range, cpi: int = 5) -> np.ndarray:
    """Image-to-text ranks as the released VSE++ evaluation computes them: one image at a
    time, its scores against every caption, a full argsort, the best of its captions."""
    ranks = np.zeros(len(rows), dtype=np.int64)
    for n, i in enumerate(rows):
        order = np.argsort(img[i] @ txt.T)[::-1]
        ranks[n] = min(int(np.where(order == j)[0][0]) for j in range(cpi * i, cpi * i + cpi))
    return ranks


def peer_t2i_ranks(img: np.ndarray, txt: np.ndarray, rows: range, cpi: int = 5) -> np.ndarray:
    """Text-to-image ranks the same way: an image's captions at a time, each argsorted."""
    ranks = np.zeros((len(rows), cpi), dtype=np.int64)
    for n, i in enumerate(rows):
        scores = txt[cpi * i : cpi * i + cpi] @ img.T
        for k in range(cpi):
            ranks[n, k] = int(np.where(np.argsort(scores[k])[::-1] == i)[0][0])
    return ranks.ravel()


def _embeddings(n_img: int, cpi: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm random images and captions, each caption near its image (so ranks are not all alike)."""
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=gen), dim=1)
    noise = torch.randn(n_img * cpi, dim, generator=gen)
    txt = torch.nn.functional.normalize(img.repeat_interleave(cpi, 0) + 1.5 * noise / dim**0.5, dim=1)
    return img.to(device), txt.to(device)


def _sizes(quick: bool) -> tuple[int, int, int]:
    n_img = 1000 if quick else 5000
    return n_img, 5 * n_img, 1024


def similarity(device: torch.device, *, quick: bool, ceilings: Ceilings) -> BenchResult:
    """Embedding similarity (one GEMM) against the GEMM floor and a per-image loop."""
    n_img, n_txt, dim = _sizes(quick)
    img, txt = _embeddings(n_img, 5, dim, device)
    flops = 2.0 * n_img * n_txt * dim
    res = BenchResult("similarity", f"dot-product similarity of {n_img:,} x {n_txt:,} unit vectors, d = {dim}")
    gemm = measure("img @ txt.T", lambda: (img @ txt.T, sync(device)), work=flops, unit="flop")
    sub = min(n_img, 200)
    loop = _scaled_loop("one image at a time", lambda: [img[i] @ txt.T for i in range(sub)], sub, n_img, device)
    res.timings += [gemm, loop]
    res.kernels.append(KernelRecord(
        "similarity", f"{n_img}x{n_txt}, d={dim}", gemm.seconds, flops, "flop", ceilings.floor(flops, "flop"),
        "2 N_img N_txt d FLOPs at the GEMM rate", loop.seconds, "one image at a time (VSE++ evaluation)",
    ))
    return res


def evaluation(device: torch.device, *, quick: bool, ceilings: Ceilings) -> BenchResult:
    """Full evaluation from embeddings: similarity, i2t and t2i ranks, R@K, against the
    GEMM floor and the released VSE++ evaluation loops (re-expressed here)."""
    n_img, n_txt, dim = _sizes(quick)
    img, txt = _embeddings(n_img, 5, dim, device)
    flops = 2.0 * n_img * n_txt * dim
    res = BenchResult("eval", f"retrieval evaluation of {n_img:,} images x {n_txt:,} captions, d = {dim}: "
                              "similarity, ranks both ways, R@1/5/10, medr, meanr")

    def ours() -> dict[str, float]:
        out = retrieval_metrics(img @ txt.T)
        sync(device)
        return out

    full = measure("similarity + ranks + R@K", ours, repeats=3, work=flops, unit="flop")
    sims = img @ txt.T
    ranks = measure("ranks + R@K of a stored matrix", lambda: retrieval_metrics(sims), repeats=3)
    img_np, txt_np = img.cpu().numpy(), txt.cpu().numpy()
    sub = min(n_img, 100 if quick else 200)
    peer = _scaled_loop("VSE++ i2t and t2i loops",
                        lambda: (peer_i2t_ranks(img_np, txt_np, range(sub)), peer_t2i_ranks(img_np, txt_np, range(sub))),
                        sub, n_img, device)
    agree = np.array_equal(i2t_ranks(sims[:sub, : 5 * sub]).cpu().numpy(),
                           peer_i2t_ranks(img_np[:sub], txt_np[: 5 * sub], range(sub)))
    res.timings += [full, ranks, peer]
    res.kernels.append(KernelRecord(
        "eval", f"{n_img}x{n_txt}, d={dim}", full.seconds, flops, "flop", ceilings.floor(flops, "flop"),
        "the similarity GEMM at the GEMM rate (ranks and R@K free)", peer.seconds,
        "VSE++ evaluation loops (argsort per query)", targets={"ratio_to_floor": 1.3, "speedup_vs_peer": 10.0},
    ))
    res.notes.append(f"among the first {sub} images and their captions, our i2t ranks equal the VSE++ loop's "
                     f"(no ties in random scores): {agree}")
    return res


def simnet(device: torch.device, *, quick: bool, ceilings: Ceilings) -> BenchResult:
    """The two-branch similarity network over every pair: blocked against its GEMM floor and a per-image loop."""
    from xmrbench.core.models.base import InputDims
    from xmrbench.core.models.two_branch import TwoBranchSimilarity

    n_img = 200 if quick else 1000
    n_txt, dim, hidden = 5 * n_img, 512, (512, 256)
    params = TwoBranchSimilarity.Params(hidden_dim=64, embed_dim=dim, fc_dims=hidden)
    net = TwoBranchSimilarity(params, InputDims(image_dim=8, vocab_size=4, text_dim=8)).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n_img, dim, generator=gen).to(device)
    b = torch.randn(n_txt, dim, generator=gen).to(device)
    widths = (dim, *hidden, 1)
    flops = 2.0 * n_img * n_txt * sum(w_in * w_out for w_in, w_out in zip(widths, widths[1:]))
    res = BenchResult("simnet", f"similarity network (product, FC {dim}-{hidden[0]}-{hidden[1]}-1) over "
                                f"{n_img:,} x {n_txt:,} pairs")
    sub = min(n_img, 20 if quick else 50)
    with torch.no_grad():
        blocked = measure("blocked", lambda: (net.similarity(a, b), sync(device)), repeats=3, work=flops, unit="flop")
        loop = _scaled_loop("one image at a time",
                            lambda: [net.pair_scores(a[i].expand_as(b), b) for i in range(sub)], sub, n_img, device)
    res.timings += [blocked, loop]
    res.kernels.append(KernelRecord(
        "simnet", f"{n_img}x{n_txt}, d={dim}", blocked.seconds, flops, "flop", ceilings.floor(flops, "flop"),
        "the FC layers' FLOPs over every pair at the GEMM rate", loop.seconds, "one image at a time",
        targets={"ratio_to_floor": 1.5, "speedup_vs_peer": 1.0},
    ))
    return res


def _scaled_loop(name: str, fn, done: int, total: int, device: torch.device) -> Timing:
    """Time ``fn`` (``done`` of ``total`` equal pieces of work) once and scale to ``total``."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    seconds = (time.perf_counter() - t0) * total / done
    return Timing(f"{name} (timed on {done} of {total}, scaled)", seconds, 1)
