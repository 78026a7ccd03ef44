"""Training methods: how a cell's parameters are optimised, one declared contract.

The engine (``engine/train.py``) owns the loop: epochs, batches drawn by the sampler,
the dev evaluation that selects the model, checkpoints and resuming. What happens in
one step belongs to the cell's *training method*, a :class:`TrainingMethod` chosen by
``method.name`` (default: the model's own, :data:`DEFAULT_METHOD`). A method declares

- ``gradient_based``: trained step by step (``step``), or fitted once (``fit``);
- ``streams()``: data streams besides the main one (annotated and pseudo pairs, say),
  each drawn by its own sampler; their batches arrive in ``TrainBatch.streams``;
- ``batch_extras``: per-item split arrays it wants in ``TrainBatch.extras``;
- ``setup()``: its optimisers and schedules, built once the model sits on its device;
- ``step(ctx, batch) -> float``: one training step, its own zero_grad / backward /
  optimiser steps (several optimisers on a schedule of steps if it likes), using
  ``ctx.progress`` for coefficients that change with training progress and
  ``ctx.artifacts`` for what earlier stages produced (``xmrbench/engine/stages.py``);
- ``end_epoch()``, ``lr()``, ``state_dict()`` / ``load_state_dict()``: learning-rate
  schedules, the logged rate, and everything a checkpoint needs to resume bit for bit.

The engine never asks a model or a method whether it has a hook: every hook has a
default in :class:`TrainingMethod` or ``RetrievalModel``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from xmrbench.config import TrainConfig
from xmrbench.core.models.base import RetrievalModel, TrainBatch
from xmrbench.errors import TrainingError
from xmrbench.params import Params
from xmrbench.registry import Registry

#: Name of the method a model trains with when its cell names none.
DEFAULT_METHOD = {False: "gradient", True: "closed_form"}  # keyed by RetrievalModel.closed_form


@dataclass(frozen=True)
class Progress:
    """Where training stands when a step starts (everything 0-based)."""

    epoch: int
    n_epochs: int
    batch: int  # index of the batch within its epoch
    steps_per_epoch: int

    @property
    def step(self) -> int:
        """Global gradient step: batches done before this one, over all epochs."""
        return self.epoch * self.steps_per_epoch + self.batch

    @property
    def total_steps(self) -> int:
        return self.n_epochs * self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """``step / total_steps`` in [0, 1): the ``p`` of progress-dependent coefficients."""
        return self.step / max(1, self.total_steps)


@dataclass
class StepContext:
    """What a method's ``step`` may read besides its batch."""

    progress: Progress
    device: torch.device
    label: str  # the run, for error messages
    artifacts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the prepared training split (``image_batch(idx)``, ``text_batch(idx)``), to fetch
    # items a batch does not hold: the offline candidates of its queries, say
    train: Any = None

    def check_finite(self, loss: torch.Tensor, what: str = "the loss") -> None:
        """Raise ``TrainingError`` (naming epoch and batch) if ``loss`` is NaN or infinite."""
        if not torch.isfinite(loss):
            p = self.progress
            raise TrainingError(f"{what} became {loss.item()} at epoch {p.epoch + 1}, batch {p.batch + 1}",
                                where=self.label)


@dataclass(frozen=True)
class Stream:
    """A data stream besides the main one: batches of ``split`` drawn by ``sampler``.

    ``kind="pairs"`` draws captions (with their images) like the main stream;
    ``kind="images"`` draws images alone. ``batch_size`` None: the cell's
    ``train.batch_size``. The stream's batch ``b`` of an epoch is paired with main
    batch ``b`` (cycling when the stream has fewer batches).
    """

    split: str
    kind: Literal["pairs", "images"] = "pairs"
    batch_size: int | None = None
    sampler: str = "random"


class MethodParams(Params):
    """Parameters every method shares (none yet)."""


def build_optimizer(train: TrainConfig, params: Iterable[nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` over ``params`` (``lr`` overrides ``train.lr``)."""
    rate = train.lr if lr is None else lr
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=rate, weight_decay=train.weight_decay)
    if train.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=rate, weight_decay=train.weight_decay)
    return torch.optim.SGD(params, lr=rate, momentum=train.momentum, weight_decay=train.weight_decay)


def build_scheduler(train: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Step decay every ``train.lr_decay_every`` epochs, or None for a constant rate."""
    if not train.lr_decay_every:
        return None
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_decay_every, gamma=train.lr_decay)


class TrainingMethod:
    """Base class of training methods; subclasses override what they need."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    #: False: fitted once by ``fit`` (no loss, no steps)
    gradient_based: ClassVar[bool] = True
    #: names of ``Split.extras`` arrays to gather into ``TrainBatch.extras``
    batch_extras: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: MethodParams, *, model: RetrievalModel, loss: nn.Module | None, train: TrainConfig):
        self.params = params
        self.model = model
        self.loss = loss
        self.train = train

    def streams(self) -> dict[str, Stream]:
        """Data streams besides the main one, by name (default: none)."""
        return {}

    def setup(self) -> None:
        """Build optimisers and schedules (the model is on its device)."""

    def step(self, ctx: StepContext, batch: TrainBatch) -> float:
        """One training step on ``batch``; returns the loss to log."""
        raise NotImplementedError

    def fit(self, split: Any) -> None:
        """Closed-form fit (methods with ``gradient_based = False``)."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called after each epoch's last step (learning-rate schedules)."""

    def lr(self) -> float:
        """The learning rate to log for the epoch (default: NaN, none)."""
        return math.nan

    def state_dict(self) -> dict[str, Any]:
        """Everything besides model and loss weights a checkpoint needs to resume exactly."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    # --- helpers for subclasses ---------------------------------------------------

    def trainable(self, *modules: nn.Module) -> list[nn.Parameter]:
        """Parameters of ``modules`` (default: model and loss) that require gradients, in order."""
        mods = modules or tuple(m for m in (self.model, self.loss) if m is not None)
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def retrieval_loss(self, batch: TrainBatch) -> torch.Tensor:
        """The cell's retrieval loss of ``batch`` plus the model's auxiliary term.

        A loss that scores sampled pairs only (``scores_pairs``) gets the model's
        per-pair scorer instead of the full similarity matrix.
        """
        model, loss_fn = self.model, self.loss
        assert loss_fn is not None
        img_emb = model.encode_images(batch.images)
        txt_emb = model.encode_texts(batch.text)
        if loss_fn.scores_pairs:
            pair_scores = lambda i, j, a=img_emb, b=txt_emb: model.pair_scores(a[i], b[j])  # noqa: E731
            loss = loss_fn(img_emb, txt_emb, labels=batch.labels, pair_scores=pair_scores)
        else:
            loss = loss_fn(img_emb, txt_emb, sims=model.similarity(img_emb, txt_emb), labels=batch.labels)
        extra = model.auxiliary_loss(batch, img_emb, txt_emb)
        if extra is not None:
            loss = loss + extra
        return loss


class GradientMethod(TrainingMethod):
    """One optimiser over model and loss parameters: loss + auxiliary term, clipped step.

    The retrieval models of the baseline zoo train with it (VSE++, SCAN, BFAN, VSRN,
    two-branch, DPC, DAN); ``train.*`` sets optimiser, rate, decay and clipping.
    """

    def setup(self) -> None:
        self.params_ = self.trainable()
        self.optimizer = build_optimizer(self.train, self.params_)
        self.scheduler = build_scheduler(self.train, self.optimizer)

    def step(self, ctx: StepContext, batch: TrainBatch) -> float:
        loss = self.retrieval_loss(batch)
        ctx.check_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params_, self.train.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def end_epoch(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])


class ClosedFormMethod(TrainingMethod):
    """A closed-form model (CCA, the tag-matching s_g baseline) fitted once on the training split."""

    gradient_based = False

    def fit(self, split: Any) -> None:
        self.model.fit(split)


METHODS: Registry[type[TrainingMethod]] = Registry(
    "training method",
    {
        "gradient": GradientMethod,
        "closed_form": ClosedFormMethod,
    },
)
