"""AOQ's Table 6 as a benchmark: the training time per batch of VSRN under the online
triplet loss and the three offline losses, as ratios to the online loss's, beside the
ratios of the seconds the paper prints (one GTX 1080 Ti, batches of 128).

Each loss runs the same training steps of :class:`~xmrbench.engine.aoq_method.AOQMethod`
(forward, backward, optimiser step, VSRN's captioning term included) on the same
batches of the synthetic world, with candidate lists drawn at random in the miner's
layout (the lists' content does not change the cost: every offline loss encodes two
images and two captions more per caption of the batch). The absolute seconds depend on
the machine; the ratios are what carries over.
"""

from __future__ import annotations

import numpy as np
import torch

from xmrbench.bench.harness import BenchResult, measure, sync

#: AOQ Table 6: VSRN's seconds per batch of 128 under each loss
PAPER_SECONDS = {"online": 1.096, "offtri": 1.489, "offquin": 1.557, "adapoffquin": 1.604}


def build_step(model: dict, loss: dict | None, method: dict | None, *, data: dict, device: torch.device,
               where: str, batch_size: int = 128, seed: int = 0):
    """A training method ready to step: ``model``, ``loss``, ``method`` and ``data`` as a
    recipe's config, Adam at lr 2e-4 with gradient clipping at 2. Returns the method, the
    prepared training split and the :class:`~xmrbench.engine.inputs.PreparedData`."""
    from xmrbench.core.losses.registry import LOSSES
    from xmrbench.core.models.registry import MODELS
    from xmrbench.data.registry import DATASETS
    from xmrbench.engine.inputs import PreparedData
    from xmrbench.engine.train import build_method
    from xmrbench.recipe.config import validate_cell_config

    raw = {"data": data, "model": model, "loss": loss, "method": method,
           "train": {"batch_size": batch_size, "lr": 0.0002, "grad_clip": 2.0}}
    cfg = validate_cell_config(raw, where=where)
    prepared = PreparedData(DATASETS[cfg.data.name](cfg.data), cfg.data, model.get("image_input", "regions"), "tokens")
    torch.manual_seed(seed)
    net = MODELS[cfg.model.name](cfg.model.params, prepared.dims).to(device)
    train = prepared.split("train")
    net.prepare_training(train)
    loss_fn = LOSSES[cfg.loss.name](cfg.loss.params).to(device) if cfg.loss is not None else None
    built = build_method(cfg, net, loss_fn)
    built.setup()
    return built, train, prepared


def synthetic_data(quick: bool) -> dict:
    """The first 400 training images of the tiny (``quick``) or small synthetic world."""
    return {"size": "tiny" if quick else "small", "train_images": 400}


def _method(loss: str, *, quick: bool, device: torch.device):
    dims = {"embed_dim": 256, "word_dim": 64, "decoder_hidden": 64, "decoder_word_dim": 64} if quick else {
        "embed_dim": 2048, "word_dim": 300, "decoder_hidden": 512, "decoder_word_dim": 300}
    method, train, _ = build_step({"name": "vsrn", "image_input": "regions", "gcn_layers": 4, **dims}, None,
                                  {"name": "aoq", "loss": loss, "h": 300 if not quick else 100},
                                  data=synthetic_data(quick), device=device, where="bench aoq-losses")
    return method, train


def time_steps(name: str, method, train, device: torch.device, *, quick: bool, candidates=None):
    """Median seconds of one training step (forward, backward, optimiser step) over fixed batches of 128."""
    from xmrbench.engine.methods import Progress, StepContext
    from xmrbench.engine.train import make_batch

    caption_image = train.caption_image()
    rng = np.random.default_rng(1)
    batches = [make_batch(train, rng.choice(train.n_captions, 128, replace=False), caption_image, device)
               for _ in range(4)]
    step = {"i": 0}
    artifacts = {} if candidates is None else {"candidates": candidates}

    def one_step() -> None:
        b = batches[step["i"] % len(batches)]
        step["i"] += 1
        ctx = StepContext(Progress(epoch=1, n_epochs=2, batch=step["i"], steps_per_epoch=1000), device,
                          "bench/train", artifacts, train)
        method.step(ctx, b)
        sync(device)

    torch.manual_seed(0)
    return measure(name, one_step, repeats=3 if quick else 5, warmup=1, budget_s=20.0 if quick else 60.0)


def _lists(train, width_t: int, width_i: int) -> dict[str, torch.Tensor]:
    """Random candidate lists in the miner's layout (other images' captions / other images)."""
    rng = np.random.default_rng(0)
    caption_image = train.caption_image()
    n_img, n_txt = train.n_images, train.n_captions
    i2t = np.empty((n_img, width_t), dtype=np.int32)
    for i in range(n_img):
        i2t[i] = rng.choice(np.flatnonzero(caption_image != i), width_t, replace=False)
    t2i = (caption_image[:, None] + 1 + rng.integers(0, n_img - 1, size=(n_txt, width_i))) % n_img
    return {"i2t": torch.from_numpy(i2t), "t2i": torch.from_numpy(t2i.astype(np.int32))}


def aoq_losses(device: torch.device, *, quick: bool, ceilings: object = None) -> BenchResult:
    """Seconds per training batch of VSRN (batches of 128) under AOQ's four losses."""
    size = "embedding 256 on the tiny world" if quick else "embedding 2048 (the paper's) on the small world"
    res = BenchResult("aoq-losses", f"AOQ Table 6: VSRN's time per batch of 128 under each loss ({size}, "
                                    f"{torch.get_num_threads()} threads)")
    seconds: dict[str, float] = {}
    for loss in PAPER_SECONDS:
        method, train = _method(loss, quick=quick, device=device)
        lists = _lists(train, 300 if not quick else 100, 60 if not quick else 20)
        timing = time_steps(f"{loss} (paper {PAPER_SECONDS[loss]:.3f} s)", method, train, device, quick=quick,
                            candidates=lists)
        res.timings.append(timing)
        seconds[loss] = timing.seconds
    for loss in ("offtri", "offquin", "adapoffquin"):
        res.ratios[f"{loss} / online, measured"] = seconds[loss] / seconds["online"]
        res.ratios[f"{loss} / online, paper (Table 6)"] = PAPER_SECONDS[loss] / PAPER_SECONDS["online"]
    res.notes.append("The paper's seconds are per batch on one GPU; only the ratios compare across machines. "
                     "Each offline loss encodes 2 images and 2 captions more per caption of the batch.")
    return res
