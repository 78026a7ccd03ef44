"""The training-method contract: :class:`TrainingMethod` and what a step reads
(:class:`Progress`, :class:`StepContext`), extra data streams (:class:`Stream`),
optimiser helpers, and :class:`GradientMethod`, the plain one-optimiser method.

``xmrbench/engine/methods.py`` describes the contract as a whole and holds the
registry of methods (``METHODS``); it re-exports everything here. The contract lives
in a module of its own so that a method written in a module beside ``methods.py``
(``engine/a3vse_method.py``) can subclass it while ``methods.py`` imports that module
to register it, without an import cycle.
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


@dataclass(frozen=True)
class Progress:
    """Where training stands when a step starts (everything 0-based).

    ``n_epochs`` is the run's epoch budget (``train.epochs``), or None for a method that
    declares it never reads it (``TrainingMethod.reads_epoch_budget``): reading
    ``total_steps`` or ``fraction`` then fails, so an undeclared dependence on the budget
    cannot slip through. A run of such a method that stopped early at its plateau is
    the run any larger budget would give (``runner/adopt.py``).
    """

    epoch: int
    n_epochs: int | None
    batch: int  # index of the batch within its epoch
    steps_per_epoch: int

    @property
    def step(self) -> int:
        """Global gradient step: batches done before this one, over all epochs."""
        return self.epoch * self.steps_per_epoch + self.batch

    @property
    def total_steps(self) -> int:
        if self.n_epochs is None:
            raise TrainingError("the training method reads the epoch budget (Progress.total_steps or fraction) "
                                "but does not declare reads_epoch_budget = True")
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

    ``extras``: names of per-item ``Split.extras`` arrays of ``split`` that this
    stream's batches carry in ``TrainBatch.extras`` (besides the model's and the
    method's ``batch_extras``, which every batch carries). ``absent``: what it means
    when the data has no split ``split`` (an empty un-annotated pool, say); the
    engine's error names the run, the stream and the split, and adds this sentence.
    """

    split: str
    kind: Literal["pairs", "images"] = "pairs"
    batch_size: int | None = None
    sampler: str = "random"
    extras: tuple[str, ...] = ()
    absent: str = ""


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
    #: registry names of the models the method can train; None: any
    models: ClassVar[tuple[str, ...] | None] = None
    #: False: the method's own Params define its whole objective, and its cells set
    #: ``loss: null`` (the engine then hands it ``loss=None``)
    uses_loss: ClassVar[bool] = True
    #: True: a step reads the epoch budget (``Progress.fraction``: a coefficient ramped over
    #: the whole run), so runs with other ``train.epochs`` differ from their first epoch on
    reads_epoch_budget: ClassVar[bool] = False

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

    def plan_epoch(self, train: Any, rng: Any) -> list[Any] | None:
        """The epoch's mini-batches when the method draws its own, one per step, each
        handed to :meth:`step` as its ``batch`` (phrase localization: region-phrase pairs
        from the split's annotations); ``train`` is the prepared training split, ``rng``
        the epoch's ``numpy`` generator (seeded by run seed and epoch). None (the
        default): the engine draws caption batches with the cell's sampler."""
        return None

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

    def epoch_curves(self) -> dict[str, float]:
        """Values the method logs once per epoch besides the loss ``step`` returns (ACMR:
        the means of its embedding and adversarial losses), keyed by curve name; called
        after ``end_epoch``. Default: none."""
        return {}

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

    def training_loss(self, ctx: StepContext, batch: TrainBatch) -> torch.Tensor:
        """The 0-d loss one step descends (here the retrieval loss plus the model's auxiliary
        term); a subclass with another objective overrides this and keeps the step."""
        return self.retrieval_loss(batch)

    def step(self, ctx: StepContext, batch: TrainBatch) -> float:
        loss = self.training_loss(ctx, batch)
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
