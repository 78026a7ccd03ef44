"""One training epoch at Flickr30K's scale, read from disk, and the evaluation of a 1K split.

:func:`write_scale_world` writes a synthetic world of Flickr30K's size in the precomp
layout: 29,000 training images x 36 regions x 2,048 float32 (about 8.5 GB in
``train_ims.h5``, one image per HDF5 chunk), 145,000 captions, a 1,000-image ``test``
split and a 100-image ``dev`` split (the loader wants one). It streams: scenes and
captions are generated for the whole split (small), the region features a block of
images at a time (:func:`~xmrbench.data.hdf5.fill_h5_features`), each block from its own
random stream (``split/<first image>``), so the array is never held in memory. Its
features are therefore not the bytes the cached ``medium`` world would hold; the world
is a workload, not a benchmark of accuracy.

:func:`run_epoch` (in a fresh child process, so that its peak resident set is the
run's own) loads the directory lazily, trains one epoch of VSE++ (the mean of the
regions as its image input) or SCAN t-i at the papers' widths on batches of 128 with the
peers' loss, then encodes the 1K test split and computes its metrics. It reports the
seconds of the epoch and of the evaluation and the process's peak resident set
(``VmHWM``), against the 3 GB target. Numbers only: nothing here asserts a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REGIONS = 36
FULL = {"train": 29_000, "test": 1_000, "dev": 100, "dim": 2048}
TARGET_RSS_BYTES = 3 * 2**30
WRITE_BLOCK = 128


def write_scale_world(root: str | Path, *, n_train: int, n_test: int, n_dev: int, dim: int, seed: int = 0,
                      regions: int = REGIONS) -> Path:
    """Write the splits ``train``, ``dev`` and ``test`` under ``root`` (precomp layout, HDF5 regions)."""
    from xmrbench.data.hdf5 import fill_h5_features
    from xmrbench.data.synthetic.captions import write_captions
    from xmrbench.data.synthetic.features import FeatureSpace, region_features
    from xmrbench.data.synthetic.world import CAPTIONS_PER_IMAGE, SizeSpec, split_scenes

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    space = FeatureSpace.build(seed, region_dim=dim, global_dim=8)
    spec = SizeSpec(train=n_train, dev=n_dev, n_test=n_test)
    for name, source, n in (("train", "train", n_train), ("dev", "dev", n_dev), ("test", "testall", n_test)):
        scenes = split_scenes(seed, source, spec)[:n]
        captions = write_captions(scenes, seed=seed, split=name, per_image=CAPTIONS_PER_IMAGE)
        (root / f"{name}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")

        def block(lo: int, hi: int, scenes: list = scenes, name: str = name) -> np.ndarray:
            feats, _ = region_features(scenes[lo:hi], space, seed=seed, split=f"{name}/{lo}", regions=regions)
            return feats

        fill_h5_features(root / f"{name}_ims.h5", (n, regions, dim), block, block_rows=WRITE_BLOCK)
    return root


def run_epoch(root: str, model: str, *, embed_dim: int, word_dim: int, max_steps: int | None = None,
              batch_size: int = 128, seed: int = 0) -> dict[str, Any]:
    """In this process: one epoch (or ``max_steps`` steps) of ``model`` on ``root``, then
    the test split's metrics; seconds and peak resident memory."""
    import torch

    from xmrbench.bench.aoq import build_step
    from xmrbench.bench.attention import _status_bytes
    from xmrbench.core.metrics.retrieval import retrieval_metrics
    from xmrbench.engine.evaluate import encode, similarity_matrix
    from xmrbench.engine.methods import Progress, StepContext
    from xmrbench.engine.train import make_batch

    specs = {"vsepp": {"name": "vsepp", "image_input": "mean_regions"},
             "scan-t2i": {"name": "scan", "image_input": "regions", "direction": "t2i", "pooling": "lse"}}
    t_load = time.perf_counter()
    method, train, prepared = build_step(
        {**specs[model], "embed_dim": embed_dim, "word_dim": word_dim}, {"name": "hardest_negative", "margin": 0.2},
        None, data={"name": "precomp", "root": root}, device=torch.device("cpu"), where=f"bench scale {model}",
        batch_size=batch_size, seed=seed)
    net = method.model
    load_s = time.perf_counter() - t_load
    caption_image = train.caption_image()
    order = np.random.default_rng(seed).permutation(train.n_captions)
    batches = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
    if max_steps is not None:
        batches = batches[:max_steps]
    device = torch.device("cpu")
    t0 = time.perf_counter()
    for step, index in enumerate(batches, 1):
        ctx = StepContext(Progress(epoch=1, n_epochs=1, batch=step, steps_per_epoch=len(batches)), device,
                          "bench/scale", {}, train)
        method.step(ctx, make_batch(train, index, caption_image, device))
    epoch_s = time.perf_counter() - t0
    rss_train = _status_bytes("VmHWM")
    t0 = time.perf_counter()
    test = prepared.split("test")
    enc = encode(net, test, device=device, batch_size=128)
    metrics = retrieval_metrics(similarity_matrix(net, enc, block_images=128))
    eval_s = time.perf_counter() - t0
    return {"model": model, "steps": len(batches), "steps_per_epoch": -(-train.n_captions // batch_size),
            "load_s": load_s, "epoch_s": epoch_s, "eval_s": eval_s, "test_images": test.n_images,
            "rsum": metrics["rsum"], "peak_rss_train_bytes": rss_train, "peak_rss_bytes": _status_bytes("VmHWM"),
            "threads": torch.get_num_threads()}


def run_child(root: Path, model: str, *, embed_dim: int, word_dim: int, max_steps: int | None = None) -> dict[str, Any]:
    """:func:`run_epoch` in a fresh Python process; its JSON result."""
    code = ("import json, sys; from xmrbench.bench.scale import run_epoch; a = sys.argv[1:]; "
            "print(json.dumps(run_epoch(a[0], a[1], embed_dim=int(a[2]), word_dim=int(a[3]), "
            "max_steps=None if a[4] == 'all' else int(a[4]))))")
    args = [str(root), model, str(embed_dim), str(word_dim), "all" if max_steps is None else str(max_steps)]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale benchmark child failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
