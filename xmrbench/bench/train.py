"""Training steps: the time per batch of 128 of VSE++, SCAN t-i and VSRN under AOQ's four
losses (AOQ's Table 6, with the ratios to the online loss beside the paper's).

Each model trains on the same synthetic batches with the peers' loss (max violation,
margin 0.2) and Adam; ``--quick`` uses small embeddings on the tiny world, ``--full`` the
papers' widths (VSE++ and SCAN 1,024, VSRN 2,048) on the small world. A training step has
no single floor (it mixes GEMMs, recurrences and elementwise work), so these records
carry times only; what carries across machines is the ratios between them.
"""

from __future__ import annotations

import torch

from xmrbench.bench.aoq import aoq_losses, build_step, synthetic_data, time_steps
from xmrbench.bench.harness import BenchResult, Ceilings, KernelRecord


def _models(quick: bool) -> dict[str, dict]:
    emb, word = (256, 64) if quick else (1024, 300)
    return {
        "vsepp": {"name": "vsepp", "image_input": "global", "embed_dim": emb, "word_dim": word},
        "scan-t2i": {"name": "scan", "image_input": "regions", "embed_dim": emb, "word_dim": word,
                     "direction": "t2i", "pooling": "lse"},
    }


def train(device: torch.device, *, quick: bool, ceilings: Ceilings | None = None) -> BenchResult:
    """Seconds per training batch of VSE++, SCAN t-i and VSRN (four losses)."""
    res = aoq_losses(device, quick=quick, ceilings=ceilings)
    res.name = "train"
    res.description = ("training steps, batches of 128: VSE++ and SCAN t-i (max violation) and "
                       + res.description.removeprefix("AOQ Table 6: "))
    size = "tiny world, embedding 256" if quick else "small world, the papers' widths"
    for t in res.timings:
        loss = t.name.split(" ")[0]
        res.kernels.append(KernelRecord(f"train-vsrn-{loss}", f"batch 128, {size}", t.seconds))
    loss = {"name": "hardest_negative", "margin": 0.2}
    for kernel, model in _models(quick).items():
        method, split, _ = build_step(model, loss, None, data=synthetic_data(quick), device=device,
                                      where=f"bench train {kernel}")
        timing = time_steps(f"{kernel} (max violation)", method, split, device, quick=quick)
        res.timings.append(timing)
        res.kernels.append(KernelRecord(f"train-{kernel}", f"batch 128, {size}", timing.seconds))
    if not quick:
        _scale(res)
    return res


def _scale(res: BenchResult) -> None:
    """One epoch of VSE++ and of SCAN t-i on a Flickr30K-sized world written to disk, each
    in a fresh process, and the evaluation of its 1K test split (:mod:`xmrbench.bench.scale`)."""
    import tempfile
    import time

    from xmrbench.bench.harness import Timing
    from xmrbench.bench.scale import FULL, TARGET_RSS_BYTES, run_child, write_scale_world

    with tempfile.TemporaryDirectory(prefix="xmrbench-scale-") as tmp:
        t0 = time.perf_counter()
        root = write_scale_world(tmp, n_train=FULL["train"], n_test=FULL["test"], n_dev=FULL["dev"], dim=FULL["dim"])
        res.timings.append(Timing(f"writing the world ({FULL['train']:,} x 36 x {FULL['dim']} float32, streamed)",
                                  time.perf_counter() - t0, 1))
        for model in ("vsepp", "scan-t2i"):
            got = run_child(root, model, embed_dim=1024, word_dim=300)
            size = f"{FULL['train']:,} images x 36 x {FULL['dim']}, {got['steps']} batches of 128"
            res.timings.append(Timing(f"{model}: one epoch from disk", got["epoch_s"], 1))
            res.timings.append(Timing(f"{model}: 1K test split, encode + score + metrics", got["eval_s"], 1))
            res.kernels.append(KernelRecord(f"epoch-{model}", size, got["epoch_s"],
                                            peak_extra_bytes=float(got["peak_rss_bytes"]),
                                            targets={"peak_extra_bytes": float(TARGET_RSS_BYTES)}))
            res.notes.append(f"{model}: epoch {got['epoch_s']:.0f} s, evaluation of {got['test_images']} test images "
                             f"{got['eval_s']:.1f} s (rsum {got['rsum']:.1f} after one epoch), peak resident set "
                             f"{got['peak_rss_bytes'] / 2**30:.2f} GiB (whole process; target 3 GiB), "
                             f"{got['threads']} threads")
