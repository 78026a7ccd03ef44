"""ACMR's training procedure (the ACMR paper, Sec. 3.5 and Algorithm 1): a minimax game
between the feature projectors (with the label classifier) and the modality classifier,
played by alternating optimiser steps.

The objective
-------------
The projectors ``theta_V``, ``theta_T`` and the label classifier ``theta_imd`` minimise
``L_emb - L_adv`` (Eq. 9); the modality classifier ``theta_D`` maximises it, i.e.
minimises its own classification loss ``L_adv`` (Eq. 10). ``L_emb = alpha L_imi +
beta L_imd + reg L_reg`` (Eq. 8, ``reg = 1`` in the paper) and ``L_adv`` (Eq. 1) are the
functions of :mod:`xmrbench.core.losses.acmr`; the labels come from the batch's
``extras["labels"]`` (one class id or one multi-hot row per image; a text carries its
image's labels).

Algorithm 1, step by step
-------------------------
Every engine step (one mini-batch) is one of two kinds, decided by the global step
number ``s = Progress.step`` alone, so a run is deterministic and resumes exactly:

- ``s mod (k + 1) < k``: an **embedding step** (Algorithm 1, steps 1-6). With ``m`` the
  number of images in the batch, it descends ``(L_emb - L_adv) / m`` over the
  projectors and the label classifier, one step of the embedding optimiser. ``L_adv``
  reaches the projectors through :func:`~xmrbench.core.reversal.reverse_gradient`, so
  their gradient is ``grad L_emb - c grad L_adv`` (over ``m``) with ``c = 1``
  (``adversary_schedule: constant``, the paper's reversal layer, "multiplies by -1").
  The modality classifier is not updated here.
- ``s mod (k + 1) = k``: a **classifier step** (steps 7-8). Since ``L_emb`` does not
  depend on ``theta_D``, step 8's ascent ``theta_D + mu lambda grad_D (L_emb - L_adv) /
  m`` is a descent on ``L_adv / m`` with step size ``mu lambda``: the classifier
  optimiser runs at learning rate ``mu * lam``, the embedding one at ``mu``. The
  projectors and the label classifier are not updated.

With ``k = 5`` the classifier steps are the engine steps 5, 11, 17, ... (0-based): five
embedding steps, then one classifier step. Both optimisers are ``train.optimizer``
(``build_optimizer``; the paper names Adam as its example of a stochastic gradient
method and writes Algorithm 1 as plain gradient steps: ``train.optimizer: sgd`` with
``train.momentum: 0`` is Algorithm 1 to the letter), each with its own state, both
stepped by ``train.lr_decay_every`` and clipped at ``train.grad_clip`` when set.
``mu`` (None: ``train.lr``) is Algorithm 1's learning rate. The paper trains with
mini-batches of 64 (``train.batch_size``).

``lam`` is the paper's single ``lambda`` (0.05, Sec. 4.1.2): it weights the hinge of
Eq. 4-5 and scales step 8. The margin of Eq. 4-5 (the paper's second ``mu``) is
``margin``.

What ``step`` returns and what is logged: ``L_emb`` of the batch (Eq. 8, before the
``1/m``), whichever kind the step is; :meth:`ACMRMethod.epoch_curves` gives the means of
``L_emb`` and ``L_adv`` over the steps since its last call (``emb_loss``,
``adv_loss``: Figure 5's two curves, one point per epoch). Both are the values on the
batch before that step's update.

Options
-------
- ``imi`` / ``imd`` (Table 5's variants): ``imi: false`` leaves ``L_imi`` out ("ACMR with
  L_imd only"), ``imd: false`` leaves ``L_imd`` out ("with L_imi only"); both off is an
  error. ``alpha: 0`` with ``imi: true`` gives the same objective as ``imi: false`` (the
  term is multiplied by 0; ``imi: false`` just does not compute it), and likewise
  ``beta: 0`` and ``imd: false``. That is Eq. 8's reading. Sec. 4.3.4 (Figure 6)
  says the opposite: that alpha "controls" intra-modal discrimination and beta
  inter-modal invariance, and that "alpha = 0 and beta = 0 represent the ACMR with
  L_imi only and ACMR with L_imd only, respectively", which swaps the roles Eq. 8
  gives them. Under Eq. 8 (followed here) Figure 6's ``alpha = 0`` point is ``beta = 0``;
  a recipe of Figure 6 says which reading it takes.
- ``adversary_schedule: released``: the reversal coefficient at the projectors is
  ``lambda_p = 2 / (1 + exp(-10 p)) - 1`` with ``p = Progress.fraction`` (the released
  code's schedule, ``docs/peers.md#acmr``) instead of 1. It scales only what the
  projectors receive; ``lam`` still scales step 8.
- ``reverse_to_projectors: false``: the embedding step descends ``L_emb`` alone and the
  adversary never acts on the projectors (the released code's behaviour,
  ``docs/peers.md#acmr``); the classifier steps still train the modality classifier,
  so ``adv_loss`` still measures how well the modalities can be told apart. The
  schedule then has nothing to scale.
- ``imi_reduction``: ``sum`` (Eq. 4-5 as printed) or ``mean`` over each direction's
  triplets; ``reg``: the weight of ``L_reg`` in Eq. 8 (1 in the paper). Under the sum,
  ``L_imi`` outweighs the other terms by orders of magnitude for any alpha and beta of
  the paper's grid; ``docs/acmr.md#measurements`` shows what the scales do.

``docs/acmr.md`` collects these readings with the paper's equations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from xmrbench.core.losses.acmr import adversarial_loss, imd_loss, imi_loss, label_matrix, reg_loss
from xmrbench.core.models.acmr import ACMR
from xmrbench.core.models.base import TrainBatch
from xmrbench.core.reversal import progress_coefficient, reverse_gradient
from xmrbench.engine.training_method import (
    MethodParams,
    StepContext,
    TrainingMethod,
    build_optimizer,
    build_scheduler,
)
from xmrbench.errors import TrainingError

#: the keys of :meth:`ACMRMethod.epoch_curves`
EMB_CURVE = "emb_loss"
ADV_CURVE = "adv_loss"


class ACMRParams(MethodParams):
    """Eq. 4-8's weights and margin, Algorithm 1's ``lambda``, ``mu`` and ``k``, and the
    switches of the module docstring. alpha and beta: the paper tunes them per dataset
    by grid search and finds [0.01, 0.1] good (Sec. 4.3.4); the default 0.1 is ours."""

    alpha: float = Field(0.1, ge=0)  # weight of L_imi (Eq. 8)
    beta: float = Field(0.1, ge=0)  # weight of L_imd (Eq. 8)
    reg: float = Field(1.0, ge=0)  # weight of L_reg (Eq. 8: 1)
    lam: float = Field(0.05, ge=0)  # lambda: hinge weight of Eq. 4-5 and step 8's scale
    mu: float | None = Field(None, gt=0)  # Algorithm 1's learning rate; None: train.lr
    k: int = Field(5, ge=1)  # embedding steps per classifier step
    margin: float = Field(1.0, ge=0)  # Eq. 4-5's margin (not printed in the paper)
    imi_reduction: Literal["sum", "mean"] = "sum"
    adversary_schedule: Literal["constant", "released"] = "constant"
    reverse_to_projectors: bool = True
    imi: bool = True  # false: "ACMR with L_imd only" (Table 5)
    imd: bool = True  # false: "ACMR with L_imi only" (Table 5)

    @model_validator(mode="after")
    def _some_objective(self) -> ACMRParams:
        if not (self.imi or self.imd):
            raise ValueError("imi and imd are both false: the embedding loss would be L_reg alone; "
                             "switch at most one of them off")
        return self


class ACMRMethod(TrainingMethod):
    """Algorithm 1 of ACMR: ``k`` embedding steps, then one modality-classifier step
    (module docstring)."""

    Params = ACMRParams
    models = ("acmr",)
    reads_epoch_budget = True  # a coefficient ramped over the run's fraction p
    uses_loss = False  # the objective is Eq. 8-10, set by the method's own Params
    batch_extras = ("labels",)
    params: ACMRParams
    model: ACMR

    def __init__(self, params: ACMRParams, **kw: Any):
        super().__init__(params, **kw)
        if not isinstance(self.model, ACMR):
            raise TrainingError(f"training method 'acmr' trains an ACMR model, not a {type(self.model).__name__}")
        self._sums = {EMB_CURVE: 0.0, ADV_CURVE: 0.0}
        self._count = 0

    # --- setup ----------------------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        """Algorithm 1's ``mu``: ``params.mu``, or ``train.lr`` when unset."""
        return self.train.lr if self.params.mu is None else self.params.mu

    def setup(self) -> None:
        mu = self.learning_rate
        self.emb_params = self.model.embedding_parameters()  # raises before prepare_training
        self.adv_params = self.model.adversary_parameters()
        self.emb_optimizer = build_optimizer(self.train, self.emb_params, lr=mu)
        self.adv_optimizer = build_optimizer(self.train, self.adv_params, lr=mu * self.params.lam)
        self.emb_scheduler = build_scheduler(self.train, self.emb_optimizer)
        self.adv_scheduler = build_scheduler(self.train, self.adv_optimizer)

    # --- Algorithm 1 ----------------------------------------------------------------

    def is_classifier_step(self, step: int) -> bool:
        """Whether global step ``step`` (0-based) updates the modality classifier (every
        ``(k + 1)``-th step) rather than the projectors and the label classifier."""
        return step % (self.params.k + 1) == self.params.k

    def reversal_coefficient(self, fraction: float) -> float:
        """How strongly the adversary's gradient reaches the projectors (reversed): 1, or
        the released schedule ``lambda_p`` at training fraction ``fraction``."""
        if self.params.adversary_schedule == "released":
            return progress_coefficient(min(max(fraction, 0.0), 1.0))
        return 1.0

    def batch_labels(self, batch: TrainBatch) -> tuple[Tensor, Tensor]:
        """The label matrices ``(B_img, C)`` of the batch's images and ``(B_txt, C)`` of its
        texts (each text carries its image's labels)."""
        if "labels" not in batch.extras:
            raise TrainingError("the batch carries no labels (extras 'labels'); ACMR trains on labelled data")
        if batch.labels is None:
            raise TrainingError("the batch does not link its texts to its images")
        img_labels = label_matrix(torch.as_tensor(batch.extras["labels"]), int(self.model.n_classes or 0))
        img_labels = img_labels.to(batch.images.device)
        if img_labels.shape[0] != batch.images.shape[0]:
            raise TrainingError(f"the batch has {img_labels.shape[0]} label rows for {batch.images.shape[0]} images")
        return img_labels, img_labels[batch.labels[1]]

    def embedding_loss(self, img_emb: Tensor, txt_emb: Tensor, img_labels: Tensor, txt_labels: Tensor) -> Tensor:
        """``L_emb`` of Eq. 8 with the terms the switches keep."""
        p, model = self.params, self.model
        loss = p.reg * reg_loss(model.projector_weights())
        if p.imi:
            loss = loss + p.alpha * imi_loss(img_emb, txt_emb, img_labels, txt_labels, lam=p.lam, margin=p.margin,
                                              reduction=p.imi_reduction)
        if p.imd:
            loss = loss + p.beta * imd_loss(model.label_logits(img_emb), model.label_logits(txt_emb),
                                            img_labels, txt_labels)
        return loss

    def adversarial_loss(self, img_emb: Tensor, txt_emb: Tensor) -> Tensor:
        """``L_adv`` of Eq. 1 on the given projections."""
        return adversarial_loss(self.model.modality_logits(img_emb), self.model.modality_logits(txt_emb))

    def step(self, ctx: StepContext, batch: TrainBatch) -> float:
        img_labels, txt_labels = self.batch_labels(batch)
        if self.is_classifier_step(ctx.progress.step):
            emb, adv = self._classifier_step(ctx, batch, img_labels, txt_labels)
        else:
            emb, adv = self._embedding_step(ctx, batch, img_labels, txt_labels)
        self._sums[EMB_CURVE] += emb
        self._sums[ADV_CURVE] += adv
        self._count += 1
        return emb

    def _embedding_step(self, ctx: StepContext, batch: TrainBatch, img_labels: Tensor,
                        txt_labels: Tensor) -> tuple[float, float]:
        """Steps 2-5: descend ``(L_emb - L_adv) / m`` over projectors and label classifier."""
        model = self.model
        img_emb = model.encode_images(batch.images)
        txt_emb = model.encode_texts(batch.text)
        emb = self.embedding_loss(img_emb, txt_emb, img_labels, txt_labels)
        ctx.check_finite(emb, "the embedding loss")
        if self.params.reverse_to_projectors:
            coef = self.reversal_coefficient(ctx.progress.fraction)
            adv = self.adversarial_loss(reverse_gradient(img_emb, coef), reverse_gradient(txt_emb, coef))
            objective = emb + adv  # the reversal turns + L_adv into - c L_adv at the projectors
        else:
            with torch.no_grad():
                adv = self.adversarial_loss(img_emb, txt_emb)
            objective = emb
        ctx.check_finite(adv, "the adversarial loss")
        self._descend(self.emb_optimizer, self.emb_params, objective / img_emb.shape[0])
        for param in self.adv_params:  # theta_D is not updated by this step; drop what reached it
            param.grad = None
        return float(emb.detach()), float(adv.detach())

    def _classifier_step(self, ctx: StepContext, batch: TrainBatch, img_labels: Tensor,
                         txt_labels: Tensor) -> tuple[float, float]:
        """Steps 7-8: descend ``L_adv / m`` over the modality classifier at rate ``mu lam``."""
        model = self.model
        with torch.no_grad():
            img_emb = model.encode_images(batch.images)
            txt_emb = model.encode_texts(batch.text)
            emb = self.embedding_loss(img_emb, txt_emb, img_labels, txt_labels)
        adv = self.adversarial_loss(img_emb, txt_emb)
        ctx.check_finite(adv, "the adversarial loss")
        self._descend(self.adv_optimizer, self.adv_params, adv / img_emb.shape[0])
        return float(emb), float(adv.detach())

    def _descend(self, optimizer: torch.optim.Optimizer, params: list, loss: Tensor) -> None:
        """One step of ``optimizer`` on ``loss``, its ``params``' gradients clipped at
        ``train.grad_clip`` when set."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.train.grad_clip)
        optimizer.step()

    # --- epochs, logging, checkpoints ---------------------------------------------------

    def end_epoch(self) -> None:
        for scheduler in (self.emb_scheduler, self.adv_scheduler):
            if scheduler is not None:
                scheduler.step()

    def lr(self) -> float:
        return self.emb_optimizer.param_groups[0]["lr"]

    def epoch_curves(self) -> dict[str, float]:
        """Means of ``L_emb`` (``emb_loss``) and ``L_adv`` (``adv_loss``) over the steps since
        the last call (NaN when there were none); resets them."""
        n = self._count
        out = {key: (total / n if n else math.nan) for key, total in self._sums.items()}
        self._sums = {key: 0.0 for key in self._sums}
        self._count = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "embedding_optimizer": self.emb_optimizer.state_dict(),
            "classifier_optimizer": self.adv_optimizer.state_dict(),
            "embedding_scheduler": self.emb_scheduler.state_dict() if self.emb_scheduler is not None else None,
            "classifier_scheduler": self.adv_scheduler.state_dict() if self.adv_scheduler is not None else None,
            "curve_sums": dict(self._sums),
            "curve_count": self._count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.emb_optimizer.load_state_dict(state["embedding_optimizer"])
        self.adv_optimizer.load_state_dict(state["classifier_optimizer"])
        if self.emb_scheduler is not None and state.get("embedding_scheduler"):
            self.emb_scheduler.load_state_dict(state["embedding_scheduler"])
        if self.adv_scheduler is not None and state.get("classifier_scheduler"):
            self.adv_scheduler.load_state_dict(state["classifier_scheduler"])
        self._sums = {key: float(value) for key, value in state["curve_sums"].items()}
        self._count = int(state["curve_count"])
