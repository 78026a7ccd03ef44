"""The training engine: one cell x one seed, from an untrained model to test metrics.

It knows models, losses and samplers only through their registries and interfaces.
Every epoch ends with a dev evaluation (model selection by dev rsum or R@1+R@5) and
an atomic checkpoint holding everything needed to continue bit-for-bit: model,
optimiser, scheduler, best state so far, curves and the torch RNG state. The
sampler's order for epoch ``e`` is drawn from ``(seed, e)`` alone, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import copy
import os
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from xmrbench.core.engine.evaluate import evaluate_protocols, evaluate_split, selection_score
from xmrbench.core.engine.inputs import PreparedData
from xmrbench.core.engine.samplers import SAMPLERS
from xmrbench.core.losses.registry import LOSSES
from xmrbench.core.models.registry import MODELS
from xmrbench.errors import StoreError, TrainingError
from xmrbench.recipe.config import CellConfig

CHECKPOINT_VERSION = 1


class Events(Protocol):
    """Progress callbacks (the command line draws bars from them)."""

    def epoch_start(self, epoch: int, n_epochs: int, n_batches: int) -> None: ...
    def batch_end(self, batch: int, loss: float) -> None: ...
    def epoch_end(self, epoch: int, stats: dict[str, float]) -> None: ...
    def warn(self, message: str) -> None: ...


class NullEvents:
    def epoch_start(self, epoch: int, n_epochs: int, n_batches: int) -> None:
        pass

    def batch_end(self, batch: int, loss: float) -> None:
        pass

    def epoch_end(self, epoch: int, stats: dict[str, float]) -> None:
        pass

    def warn(self, message: str) -> None:
        """Without a listener, a Python warning (visible to library callers and tests)."""
        import warnings

        warnings.warn(message, CheckpointWarning, stacklevel=3)


@dataclass
class RunOutput:
    metrics: dict[str, dict[str, float]]  # protocol (and "dev") -> metric -> value
    ranks: dict[str, dict[str, list[int]]]  # protocol -> {"i2t": [...], "t2i": [...]}
    curves: dict[str, list[float]]
    best_epoch: int | None
    timing: dict[str, float]
    n_params: int
    resumed_from_epoch: int | None = None
    state_dict: dict[str, Any] = field(default_factory=dict, repr=False)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error."""
    from xmrbench.errors import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every generator a run uses and request torch's deterministic algorithms
    (warning where none exists). They matter on the CPU too: with more than one thread,
    the backward of a gather with repeated indices (``x[rows]``, VSRN's caption loss,
    the triplet losses' anchors) accumulates with atomic adds in an order that changes
    from run to run; the deterministic path sorts the indices first."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.manual_seed_all(seed)


#: What a file in a results store may hold: exactly what ``torch.load(weights_only=True)``
#: rebuilds without running code from the file (tensors, numbers, strings, plain containers).
#: Exact types: a numpy float64 is a float subclass, yet a weights-only load refuses it.
_PLAIN_LEAVES = (bool, int, float, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


#: How a weights-only load says that the file asks for an object it will not build
#: (anything else it raises means a torn or foreign file).
_REFUSED = re.compile(r"not an allowed global|is blocked|TorchScript|must be \S+ to load")


class CheckpointWarning(RuntimeWarning):
    """A checkpoint could not be used; the run starts over."""


def check_plain(obj: Any, where: str = "") -> None:
    """Raise TypeError unless ``obj`` holds only tensors, numbers, strings and plain containers.

    Every file xmrbench writes into a store passes this before ``torch.save``, so that
    ``load_plain`` (``weights_only=True``) can read it back; a numpy scalar or any
    other object is a bug here, never something to pickle.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_LEAVES:
        return
    if type(obj) in (dict, OrderedDict):  # OrderedDict: state dicts
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where or 'object'}: key {key!r} is a {type(key).__name__}, not a string or int")
            check_plain(value, f"{where}.{key}" if where else str(key))
        return
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where or 'object'}: a {type(obj).__module__}.{type(obj).__name__} cannot be stored "
                    "(only tensors, numbers, strings and plain containers load without unpickling)")


def load_plain(path: Path, *, what: str = "file", map_location: Any = "cpu") -> dict[str, Any]:
    """Read a dict written by ``torch.save`` without ever running code from the file.

    ``torch.load(weights_only=True)`` rebuilds tensors, numbers, strings and plain
    containers and refuses every other object. A refused, torn or foreign file is a
    one-line ``StoreError`` naming it (``what`` says what it should have been).
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"cannot read {what}: file not found", where=str(path)) from None
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        if _REFUSED.search(str(exc)):
            raise StoreError(f"cannot read {what}: refused, it holds objects other than tensors, numbers, strings "
                             "and plain containers, and unpickling those can run code from the file (not loaded)",
                             where=str(path)) from None
        raise StoreError(f"cannot read {what} ({exc.__class__.__name__}); torn, or not written by xmrbench",
                         where=str(path)) from None
    if not isinstance(obj, dict):
        raise StoreError(f"cannot read {what}: a {type(obj).__name__}, not the dict xmrbench writes", where=str(path))
    return obj


def _atomic_torch_save(obj: Any, path: Path) -> None:
    check_plain(obj, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _optimizer(cfg: CellConfig, params) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _batch_inputs(split, caption_index: np.ndarray, caption_image: np.ndarray):
    """Unique images of a caption batch, labels linking captions to them, and the
    images' indices in the training split."""
    images, txt_labels = np.unique(caption_image[caption_index], return_inverse=True)
    img_labels = np.arange(len(images))
    return (
        split.image_batch(images),
        split.text_batch(caption_index),
        (torch.from_numpy(img_labels), torch.from_numpy(txt_labels.astype(np.int64))),
        images.astype(np.int64),
    )


def train_and_evaluate(
    cfg: CellConfig,
    seed: int,
    prepared: PreparedData,
    *,
    device: torch.device,
    work_dir: Path | None = None,
    events: Events | None = None,
    label: str = "run",
    stop_requested: Callable[[], bool] | None = None,
) -> RunOutput:
    """Train ``cfg`` with ``seed`` (resuming from ``work_dir`` if it holds a checkpoint) and evaluate."""
    events = events or NullEvents()
    t_start = time.perf_counter()
    seed_everything(seed, device)

    model_cls = MODELS[cfg.model.name]
    model = model_cls(cfg.model.params, prepared.dims)
    train = prepared.split("train")
    prepare_training = getattr(model, "prepare_training", None)
    if prepare_training is not None:  # parameters sized by the training split (DPC: one class per image)
        prepare_training(train)
    model = model.to(device)
    dev = prepared.split("dev", max_images=cfg.eval.dev_images)
    eval_kw = dict(device=device, batch_size=cfg.eval.batch_size, block_images=cfg.eval.block_images)
    if cfg.loss is None:  # a closed-form model: fit, then evaluate
        t0 = time.perf_counter()
        model.fit(train)  # type: ignore[attr-defined]
        fit_s = time.perf_counter() - t0
        best_dev, _ = evaluate_split(model, dev, **eval_kw)
        return _finish(model, prepared, cfg, {"epoch": [], "fit_s": [fit_s]}, best_dev, 0, eval_kw, t_start, None)
    loss_fn = LOSSES[cfg.loss.name](cfg.loss.params).to(device)
    auxiliary = getattr(model, "auxiliary_loss", None)
    params = [p for p in list(model.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    optimizer = _optimizer(cfg, params)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.train.lr_decay_every, gamma=cfg.train.lr_decay)
        if cfg.train.lr_decay_every
        else None
    )
    sampler = SAMPLERS[cfg.train.sampler]
    caption_image = train.caption_image()

    curves: dict[str, list[float]] = {"epoch": [], "train_loss": [], "dev_score": [], "dev_rsum": [], "lr": [], "epoch_s": []}
    best_state: dict[str, Any] | None = None
    best_score, best_epoch = -float("inf"), None
    best_dev: dict[str, float] = {}
    start_epoch, resumed = 0, None

    ckpt_path = work_dir / "checkpoint.pt" if work_dir else None
    if ckpt_path is not None and ckpt_path.is_file():
        try:  # never unpickled: a checkpoint is read with weights_only=True or not at all
            ckpt = load_plain(ckpt_path, what="checkpoint", map_location=device)
        except StoreError as exc:  # refused, torn or foreign: start over rather than fail
            events.warn(f"{exc.one_line()}; starting {label} over from epoch 1")
            ckpt = None
        if ckpt and ckpt.get("version") == CHECKPOINT_VERSION and ckpt.get("cell_hash") == cfg.hash() and ckpt.get("seed") == seed:
            try:
                model.load_state_dict(ckpt["model"])
                loss_fn.load_state_dict(ckpt["loss"])
                optimizer.load_state_dict(ckpt["optimizer"])
                if scheduler is not None and ckpt.get("scheduler"):
                    scheduler.load_state_dict(ckpt["scheduler"])
                best_state, best_score, best_epoch = ckpt["best_state"], ckpt["best_score"], ckpt["best_epoch"]
                best_dev, curves = ckpt["best_dev"], ckpt["curves"]
                torch.set_rng_state(ckpt["torch_rng"].cpu())
                start_epoch = resumed = ckpt["epoch"] + 1
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:  # half-applied: no way back
                raise StoreError(f"checkpoint names this run but does not fit it ({exc.__class__.__name__}); "
                                 "delete it to start the run over", where=str(ckpt_path)) from None

    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng([seed, epoch])
        batches = sampler(caption_image, cfg.train.batch_size, rng)
        events.epoch_start(epoch, cfg.train.epochs, len(batches))
        total = 0.0
        for b, caption_index in enumerate(batches):
            images, text, (img_labels, txt_labels), image_ids = _batch_inputs(train, caption_index, caption_image)
            img_emb = model.encode_images(images.to(device))
            txt_emb = model.encode_texts(text.to(device))
            labels = (img_labels.to(device), txt_labels.to(device))
            if getattr(loss_fn, "scores_pairs", False):  # score only the pairs the loss samples
                pair_scores = lambda i, j, a=img_emb, b=txt_emb: model.pair_scores(a[i], b[j])  # noqa: E731
                loss = loss_fn(img_emb, txt_emb, labels=labels, pair_scores=pair_scores)
            else:
                loss = loss_fn(img_emb, txt_emb, sims=model.similarity(img_emb, txt_emb), labels=labels)
            if auxiliary is not None:
                aux_kw = dict(images=images, text=text, img_emb=img_emb, txt_emb=txt_emb, labels=labels)
                if getattr(model, "auxiliary_uses_image_ids", False):  # global training-image index of each batch image
                    aux_kw["image_ids"] = torch.from_numpy(image_ids).to(device)
                loss = loss + auxiliary(**aux_kw)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}", where=label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            optimizer.step()
            total += float(loss.detach())
            events.batch_end(b, float(loss.detach()))
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        dev_metrics, _ = evaluate_split(model, dev, **eval_kw)
        score = selection_score(dev_metrics, cfg.train.select_by)
        if score > best_score:
            best_score, best_epoch, best_dev = score, epoch + 1, dev_metrics
            best_state = copy.deepcopy(model.state_dict())
        epoch_s = time.perf_counter() - t0
        for key, value in (
            ("epoch", epoch + 1),
            ("train_loss", total / max(1, len(batches))),
            ("dev_score", score),
            ("dev_rsum", dev_metrics["rsum"]),
            ("lr", lr),
            ("epoch_s", epoch_s),
        ):
            curves[key].append(value)
        if ckpt_path is not None:
            _atomic_torch_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "cell_hash": cfg.hash(),
                    "seed": seed,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "best_state": best_state,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_dev": best_dev,
                    "curves": curves,
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt_path,
            )
        events.epoch_end(epoch, {"loss": curves["train_loss"][-1], "dev_rsum": dev_metrics["rsum"]})
        if stop_requested is not None and stop_requested() and epoch + 1 < cfg.train.epochs:
            raise KeyboardInterrupt

    if best_state is None:  # no training epoch: evaluate the initial model
        best_dev, _ = evaluate_split(model, dev, **eval_kw)
        best_epoch = 0
    else:
        model.load_state_dict(best_state)
    return _finish(model, prepared, cfg, curves, best_dev, best_epoch, eval_kw, t_start, resumed)


def _finish(model, prepared, cfg, curves, best_dev, best_epoch, eval_kw, t_start, resumed) -> RunOutput:
    """Evaluate the selected model on the cell's protocols and package the output."""
    t0 = time.perf_counter()
    metrics, ranks = evaluate_protocols(
        model, prepared, cfg.eval.protocols, sentence=cfg.eval.sentence_retrieval, **eval_kw
    )
    t_eval = time.perf_counter() - t0
    metrics["dev"] = best_dev
    return RunOutput(
        metrics=metrics,
        ranks=ranks if cfg.eval.store_ranks else {},
        curves=curves,
        best_epoch=best_epoch,
        timing={
            "train_s": float(sum(curves.get("epoch_s", curves.get("fit_s", [])))),
            "eval_s": t_eval,
            "wall_s": time.perf_counter() - t_start,  # this process only (excludes epochs before a resume)
        },
        n_params=sum(p.numel() for p in model.parameters()),
        resumed_from_epoch=resumed,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
    )
