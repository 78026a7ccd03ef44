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
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from xmrbench.config import CellConfig
from xmrbench.core.convergence import Convergence, closed_form, has_plateaued, of_curve
from xmrbench.core.losses.registry import LOSSES
from xmrbench.core.metrics.protocols import PROTOCOLS
from xmrbench.core.models.base import RetrievalModel, TrainBatch
from xmrbench.core.models.registry import MODELS
from xmrbench.engine.evaluate import evaluate_split, selection_score
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.methods import DEFAULT_METHOD, METHODS, Progress, StepContext, Stream, TrainingMethod
from xmrbench.engine.samplers import SAMPLERS, Sampler
from xmrbench.engine.tasks import TASKS, evaluate_protocols
from xmrbench.errors import StoreError, TrainingError

CHECKPOINT_VERSION = 2  # 2: optimiser state under 'method' (the training method's own)


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
    convergence: Convergence | None = None  # None: not a training run (an ensemble's average)


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


def deterministic_algorithms() -> None:
    """Switch torch's eager kernels to their deterministic algorithms (warning where none exists).

    ``torch.use_deterministic_algorithms`` also imports the compiler's configuration, to
    set a flag that only compiled code reads: about 2 s on its first call in a process
    (torch 2.13, measured), paid by every worker and every command that trains. Nothing
    here is compiled, so the eager switch it sets is set directly; the public call is
    used where torch lacks that switch or the compiler is already loaded.
    """
    if "torch._inductor.config" not in sys.modules:
        try:
            torch._C._set_deterministic_algorithms(True, warn_only=True)
            return
        except AttributeError:  # a torch without that switch
            pass
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every generator a run uses and request torch's deterministic algorithms
    (warning where none exists). They matter on the CPU too: with more than one thread,
    the backward of a gather with repeated indices (``x[rows]``, VSRN's caption loss,
    the triplet losses' anchors) accumulates with atomic adds in an order that changes
    from run to run; the deterministic path sorts the indices first."""
    random.seed(seed)
    torch.manual_seed(seed)
    deterministic_algorithms()
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


def _gather_extras(split, names: tuple[str, ...], image_ids: np.ndarray, caption_ids: np.ndarray | None,
                   device: torch.device) -> dict[str, Any]:
    """The split's per-image or per-caption ``extras[name]`` rows of a batch."""
    out: dict[str, Any] = {}
    extras = split.split.extras
    for name in names:
        if name not in extras:
            raise TrainingError(f"split {split.name!r} has no extras {name!r} (asked for by the model or method)")
        values = extras[name]
        if len(values) == split.n_images:
            index = image_ids
        elif caption_ids is not None and len(values) == split.n_captions:
            index = caption_ids
        else:
            raise TrainingError(f"extras {name!r} of split {split.name!r} has {len(values)} entries: neither "
                                f"one per image ({split.n_images}) nor one per caption ({split.n_captions})")
        rows = np.asarray(values)[index] if not isinstance(values, list) else [values[int(i)] for i in index]
        out[name] = torch.as_tensor(rows).to(device) if isinstance(rows, np.ndarray) and rows.dtype != object else rows
    return out


def make_batch(split, caption_index: np.ndarray, caption_image: np.ndarray, device: torch.device,
               extras: tuple[str, ...] = ()) -> TrainBatch:
    """A :class:`TrainBatch` of the captions ``caption_index`` of ``split`` (with their images)."""
    images, text, (img_labels, txt_labels), image_ids = _batch_inputs(split, caption_index, caption_image)
    caption_ids = np.asarray(caption_index, dtype=np.int64)
    return TrainBatch(
        images=images.to(device),
        text=text.to(device),
        labels=(img_labels.to(device), txt_labels.to(device)),
        image_ids=torch.from_numpy(image_ids).to(device),
        caption_ids=torch.from_numpy(caption_ids).to(device),
        extras=_gather_extras(split, extras, image_ids, caption_ids, device) if extras else {},
    )


def make_image_batch(split, image_index: np.ndarray, device: torch.device, extras: tuple[str, ...] = ()) -> TrainBatch:
    """A :class:`TrainBatch` of images alone (an image-only stream)."""
    image_ids = np.asarray(image_index, dtype=np.int64)
    return TrainBatch(images=split.image_batch(image_ids).to(device), text=None, labels=None,
                      image_ids=torch.from_numpy(image_ids).to(device), caption_ids=None,
                      extras=_gather_extras(split, extras, image_ids, None, device) if extras else {})


class _StreamBatches:
    """One epoch's batches of a method's extra stream, drawn from ``(seed, epoch, stream number)``."""

    def __init__(self, number: int, name: str, stream: Stream, prepared: PreparedData, cfg: CellConfig,
                 device: torch.device, extras: tuple[str, ...], label: str):
        if stream.split not in prepared.data.split_names:
            method = cfg.method.name if cfg.method is not None else "(default)"
            have = ", ".join(prepared.data.split_names) or "none"
            why = f"; {stream.absent}" if stream.absent else ""
            raise TrainingError(f"stream {name!r} of training method {method!r} draws from split {stream.split!r}, "
                                f"which the data lacks (it has: {have}){why}", where=label)
        self.number, self.stream, self.device = number, stream, device
        self.extras = tuple(dict.fromkeys((*extras, *stream.extras)))
        self.split = prepared.split(stream.split)
        self.batch_size = stream.batch_size or cfg.train.batch_size
        self.sampler = SAMPLERS[stream.sampler]
        self.batches: list[np.ndarray] = []

    def new_epoch(self, seed: int, epoch: int) -> None:
        rng = np.random.default_rng([seed, epoch, self.number])
        if self.stream.kind == "pairs":
            self.batches = self.sampler(self.split.caption_image(), self.batch_size, rng)
        else:  # images alone: the sampler draws over an identity caption -> image map
            self.batches = self.sampler(np.arange(self.split.n_images), self.batch_size, rng)
        if not self.batches:
            raise TrainingError(f"stream over split {self.stream.split!r} yields no batch")

    def batch(self, b: int) -> TrainBatch:
        index = self.batches[b % len(self.batches)]
        if self.stream.kind == "pairs":
            return make_batch(self.split, index, self.split.caption_image(), self.device, self.extras)
        return make_image_batch(self.split, index, self.device, self.extras)


def epoch_batches(sampler: Sampler, caption_image: np.ndarray, batch_size: int, rng: np.random.Generator,
                  min_pairs: int | None = None) -> list[np.ndarray]:
    """One epoch's batches: the sampler's passes over the training pairs, repeated (each
    in a new order from the same generator) until they hold at least ``min_pairs``."""
    batches = sampler(caption_image, batch_size, rng)
    drawn = sum(len(b) for b in batches)
    while min_pairs is not None and 0 < drawn < min_pairs:
        more = sampler(caption_image, batch_size, rng)
        batches += more
        drawn += sum(len(b) for b in more)
    return batches


def build_method(cfg: CellConfig, model: RetrievalModel, loss: torch.nn.Module | None) -> TrainingMethod:
    """The cell's training method (``method.name``, default: the model's)."""
    if cfg.method is not None:
        cls, params = METHODS[cfg.method.name], cfg.method.params
    else:
        cls = METHODS[DEFAULT_METHOD[type(model).closed_form]]
        params = cls.Params()
    return cls(params, model=model, loss=loss, train=cfg.train)


def _load_word_vectors(model: RetrievalModel, prepared: PreparedData, name: str, label: str) -> None:
    """Initialise the model's token embedding with ``data.word_vectors`` (when set)."""
    vectors = prepared.word_vectors()
    if vectors is None:
        if model.requires_word_vectors:
            raise TrainingError(f"model {name!r} as configured needs pretrained word vectors: set data.word_vectors "
                                "(a GloVe text file, or synthetic:DIM for the synthetic world's)", where=label)
        return
    embedding = model.word_embedding()
    if embedding is None:
        raise TrainingError(f"data.word_vectors is set, but model {name!r} has no token embedding to initialise",
                            where=label)
    if tuple(embedding.weight.shape) != vectors.shape:
        raise TrainingError(f"word vectors of shape {vectors.shape} do not fit the token embedding "
                            f"{tuple(embedding.weight.shape)} of model {name!r} (set model.word_dim to "
                            f"{vectors.shape[1]})", where=label)
    with torch.no_grad():
        embedding.weight.copy_(torch.from_numpy(vectors))


def _build_model(cfg: CellConfig, prepared: PreparedData, label: str, state: dict[str, torch.Tensor] | None = None,
                 what: str = "the weights") -> RetrievalModel:
    """The cell's model, initialised as a training run starts it, then given ``state``
    (``what``: the weights' name in the error when they do not fit) when there is one."""
    model = MODELS[cfg.model.name](cfg.model.params, prepared.dims)
    model.prepare_training(prepared.split("train"))  # parameters sized by the training split (DPC: one class per image)
    _load_word_vectors(model, prepared, cfg.model.name, label)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise TrainingError(f"{what} do not fit model {cfg.model.name!r} ({first})", where=label) from None
    return model


def evaluate_trained(
    cfg: CellConfig,
    seed: int,
    prepared: PreparedData,
    state: dict[str, torch.Tensor],
    curves: dict[str, list[float]],
    best_epoch: int | None,
    *,
    device: torch.device,
    label: str = "run",
    on_sims: Callable[[str, list[torch.Tensor]], None] | None = None,
) -> RunOutput:
    """Evaluate a model another cell selected, trained with this cell's training
    configuration (the two differ only in what is reported: ``runner/adopt.py``).

    ``state`` is that run's selected weights, ``curves`` and ``best_epoch`` its training
    record. The selection metrics are recomputed from the weights on the same dev
    images (the same numbers the training run selected by), then the cell's protocols
    are evaluated as at the end of training: the output is the one training this cell
    would give on the machine and thread count that trained the weights.
    """
    t_start = time.perf_counter()
    seed_everything(seed, device)
    model = _build_model(cfg, prepared, label, state, "the trained weights").to(device)
    dev = prepared.split("dev", max_images=cfg.eval.dev_images)
    eval_kw = dict(device=device, batch_size=cfg.eval.batch_size, block_images=cfg.eval.block_images)
    best_dev = _evaluate_dev(model, dev, cfg.train.select_by, eval_kw)
    return _finish(model, prepared, cfg, curves, best_dev, best_epoch, eval_kw, t_start, None, on_sims)


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
    init_state: dict[str, torch.Tensor] | None = None,
    artifacts: dict[str, dict[str, Any]] | None = None,
    on_sims: Callable[[str, list[torch.Tensor]], None] | None = None,
    resume_key: str | None = None,
) -> RunOutput:
    """Train ``cfg`` with ``seed`` (resuming from ``work_dir`` if it holds a checkpoint) and evaluate.

    ``resume_key``: the run's open budget hash (``runner/adopt.py``), written into its
    checkpoints; a checkpoint with this key and an epoch inside ``train.epochs`` fits the
    run as well as its own (one left by a smaller budget that ended at its cap).

    ``init_state``: model weights to start from (an earlier stage's selected model)
    instead of the initialisation; ``artifacts``: what earlier stages derived (mined
    candidate lists, say), handed to the training method as ``StepContext.artifacts``;
    ``on_sims``: receives ``(protocol, matrices)`` of the selected model's final
    evaluation (:func:`xmrbench.engine.tasks.evaluate_protocols`).
    """
    events = events or NullEvents()
    t_start = time.perf_counter()
    seed_everything(seed, device)

    model = _build_model(cfg, prepared, label, init_state, "the initial weights").to(device)
    train = prepared.split("train")
    dev = prepared.split("dev", max_images=cfg.eval.dev_images)
    eval_kw = dict(device=device, batch_size=cfg.eval.batch_size, block_images=cfg.eval.block_images)
    loss_fn = LOSSES[cfg.loss.name](cfg.loss.params).to(device) if cfg.loss is not None else None
    method = build_method(cfg, model, loss_fn)
    if not method.gradient_based:  # fitted once, then evaluated
        t0 = time.perf_counter()
        method.fit(train)
        fit_s = time.perf_counter() - t0
        best_dev = _evaluate_dev(model, dev, cfg.train.select_by, eval_kw)
        return _finish(model, prepared, cfg, {"epoch": [], "fit_s": [fit_s]}, best_dev, 0, eval_kw, t_start, None,
                       on_sims)
    method.setup()
    extras = tuple(dict.fromkeys((*type(model).batch_extras, *type(method).batch_extras)))
    declared = method.streams()
    streams = [_StreamBatches(i + 1, name, s, prepared, cfg, device, extras, label)
               for i, (name, s) in enumerate(declared.items())]
    stream_names = list(declared)
    sampler = SAMPLERS[cfg.train.sampler]
    caption_image = train.caption_image()

    curves: dict[str, list[float]] = {"epoch": [], "train_loss": [], "dev_score": [], "lr": [], "epoch_s": []}
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
        fits = ckpt is not None and (ckpt.get("cell_hash") == cfg.hash() or (
            resume_key is not None and ckpt.get("resume_key") == resume_key and ckpt.get("epoch", 1 << 30) < cfg.train.epochs))
        if fits and ckpt.get("version") == CHECKPOINT_VERSION and ckpt.get("seed") == seed:
            try:
                model.load_state_dict(ckpt["model"])
                if loss_fn is not None:
                    loss_fn.load_state_dict(ckpt["loss"])
                method.load_state_dict(ckpt["method"])
                best_state, best_score, best_epoch = ckpt["best_state"], ckpt["best_score"], ckpt["best_epoch"]
                best_dev, curves = ckpt["best_dev"], ckpt["curves"]
                torch.set_rng_state(ckpt["torch_rng"].cpu())
                start_epoch = resumed = ckpt["epoch"] + 1
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:  # half-applied: no way back
                raise StoreError(f"checkpoint names this run but does not fit it ({exc.__class__.__name__}); "
                                 "delete it to start the run over", where=str(ckpt_path)) from None

    budget = cfg.train.epochs if method.reads_epoch_budget else None  # None: reading it fails (Progress)
    for epoch in range(start_epoch, cfg.train.epochs):
        if cfg.train.early_stop and has_plateaued(curves["dev_score"], cfg.train.plateau_window, cfg.train.plateau_gain):
            break  # resumed after the epoch that reached the plateau
        t0 = time.perf_counter()
        model.train()
        rng = np.random.default_rng([seed, epoch])
        planned = method.plan_epoch(train, rng)
        if planned is not None and streams:
            raise TrainingError(f"training method {cfg.method.name!r} draws its own batches and cannot also declare "
                                "streams", where=label)
        batches = planned if planned is not None else \
            epoch_batches(sampler, caption_image, cfg.train.batch_size, rng, cfg.train.min_epoch_pairs)
        for stream in streams:
            stream.new_epoch(seed, epoch)
        events.epoch_start(epoch, cfg.train.epochs, len(batches))
        total = 0.0
        for b, caption_index in enumerate(batches):
            batch = caption_index if planned is not None else \
                make_batch(train, caption_index, caption_image, device, extras)
            for name, stream in zip(stream_names, streams):
                batch.streams[name] = stream.batch(b)
            ctx = StepContext(Progress(epoch, budget, b, len(batches)), device, label, artifacts or {}, train)
            value = method.step(ctx, batch)
            total += value
            events.batch_end(b, value)
        lr = method.lr()
        method.end_epoch()
        model.after_epoch(train)  # closed-form parts of a trained model (Deep CCA's linear CCA)
        dev_metrics = _evaluate_dev(model, dev, cfg.train.select_by, eval_kw)
        score = selection_score(dev_metrics, cfg.train.select_by)
        if score > best_score:
            best_score, best_epoch, best_dev = score, epoch + 1, dev_metrics
            best_state = copy.deepcopy(model.state_dict())
        epoch_s = time.perf_counter() - t0
        for key, value in (
            ("epoch", epoch + 1),
            ("train_loss", total / max(1, len(batches))),
            ("dev_score", score),
            ("lr", lr),
            ("epoch_s", epoch_s),
            # the dev split's rsum (image-sentence) or mean mAP (label task), and R@1 per
            # direction where the task has it (AOQ Figure 4 plots them per epoch)
            *((f"dev_{k}", dev_metrics[k]) for k in ("rsum", "avg_map", "pl_r1", "i2t_r1", "t2i_r1")
              if k in dev_metrics),
            # the method's own per-epoch values (ACMR Figure 5: its embedding and adversarial losses)
            *method.epoch_curves().items(),
        ):
            curves.setdefault(key, []).append(value)
        if ckpt_path is not None:
            _atomic_torch_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "cell_hash": cfg.hash(),
                    "resume_key": resume_key,
                    "seed": seed,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict() if loss_fn is not None else {},
                    "method": method.state_dict(),
                    "best_state": best_state,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_dev": best_dev,
                    "curves": curves,
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt_path,
            )
        events.epoch_end(epoch, {"loss": curves["train_loss"][-1],
                                 **{f"dev_{k}": dev_metrics[k] for k in ("rsum", "avg_map", "pl_r1")
                                    if k in dev_metrics}})
        if cfg.train.early_stop and has_plateaued(curves["dev_score"], cfg.train.plateau_window, cfg.train.plateau_gain):
            break
        if stop_requested is not None and stop_requested() and epoch + 1 < cfg.train.epochs:
            raise KeyboardInterrupt

    if best_state is None:  # no training epoch: evaluate the initial model
        model.after_epoch(train)
        best_dev = _evaluate_dev(model, dev, cfg.train.select_by, eval_kw)
        best_epoch = 0
    else:
        model.load_state_dict(best_state)
    return _finish(model, prepared, cfg, curves, best_dev, best_epoch, eval_kw, t_start, resumed, on_sims)


def _evaluate_dev(model: RetrievalModel, dev: Any, select_by: str, eval_kw: dict[str, Any]) -> dict[str, float]:
    """The dev split's metrics for model selection: label mAP (``select_by: map``, the
    ``label`` task ACMR's datasets are scored by), phrase localization recall
    (``select_by: phrase``, the ``phrase`` task) or image-sentence recall (the others)."""
    if select_by == "map":
        metrics, _ = TASKS["label"](model, dev, PROTOCOLS["test_labels"], sentence=False, **eval_kw)
        return metrics
    if select_by == "phrase":
        metrics, _ = TASKS["phrase"](model, dev, PROTOCOLS["test_phrases"], sentence=False, **eval_kw)
        return metrics
    metrics, _ = evaluate_split(model, dev, **eval_kw)
    return metrics


def _finish(model, prepared, cfg, curves, best_dev, best_epoch, eval_kw, t_start, resumed, on_sims=None) -> RunOutput:
    """Evaluate the selected model on the cell's protocols and package the output."""
    t0 = time.perf_counter()
    protocol_s: dict[str, float] = {}
    metrics, ranks = evaluate_protocols(
        model, prepared, cfg.eval.protocols, sentence=cfg.eval.sentence_retrieval, seconds=protocol_s,
        on_sims=on_sims, **eval_kw
    )
    t_eval = time.perf_counter() - t0
    if "dev" not in cfg.eval.protocols:  # a "dev" protocol (the whole split) keeps its own numbers
        metrics["dev"] = best_dev
    if "fit_s" in curves:
        convergence = closed_form()
    else:
        convergence = of_curve(curves["dev_score"], window=cfg.train.plateau_window, threshold=cfg.train.plateau_gain,
                               max_epochs=cfg.train.epochs, metric=f"dev {cfg.train.select_by}")
    return RunOutput(
        metrics=metrics,
        ranks=ranks if cfg.eval.store_ranks else {},
        curves=curves,
        best_epoch=best_epoch,
        timing={
            "train_s": float(sum(curves.get("epoch_s", curves.get("fit_s", [])))),
            "eval_s": t_eval,
            "wall_s": time.perf_counter() - t_start,  # this process only (excludes epochs before a resume)
            **{f"eval_{name}_s": sec for name, sec in protocol_s.items()},
        },
        n_params=sum(p.numel() for p in model.parameters()),
        resumed_from_epoch=resumed,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        convergence=convergence,
    )
