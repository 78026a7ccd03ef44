"""Test-only training methods and a miner, written against the declared contracts
(``engine/methods.py``, ``engine/miners.py``) with no change to the engine.

- ``test_alternating``: two optimisers on a k:1 schedule. The embedding step
  minimises the retrieval loss minus ``coef(p) * D`` (fooling a modality
  discriminator), the discriminator step minimises ``D``; ``coef(p) = 2 / (1 +
  exp(-10 p)) - 1`` grows with training progress ``p`` (``core/reversal.py``).
  Every step is logged on the method.
- ``test_offline``: the gradient method plus an offline triplet term over the
  candidate lists of the ``negatives`` artifact (``ctx.artifacts``).
- ``test_counting``: the ``hardest_negatives`` miner, logging each computation.

Both write one line per event to ``$STAGEKIT_LOG`` when set, and kill their own
process (SIGKILL, no clean-up) at the point ``$STAGEKIT_KILL`` names:
``mine`` (inside the miner, before it returns), or ``<cell>:<epoch>`` (at the first
step of that 0-based epoch of that cell, after the previous epoch's checkpoint).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from pydantic import Field

from xmrbench.core.models.base import TrainBatch
from xmrbench.core.reversal import progress_coefficient
from xmrbench.engine.methods import METHODS, GradientMethod, MethodParams, StepContext, TrainingMethod, build_optimizer
from xmrbench.engine.miners import MINERS, HardestNegatives


def log(line: str) -> None:
    path = os.environ.get("STAGEKIT_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def maybe_kill(point: str) -> None:
    if os.environ.get("STAGEKIT_KILL") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def weights_sum(model: torch.nn.Module) -> float:
    """A fingerprint of a model's weights (which initial weights a stage started from)."""
    return float(sum(v.double().sum() for v in model.state_dict().values() if v.is_floating_point()))


class AlternatingMethod(TrainingMethod):
    reads_epoch_budget = True  # its coefficient follows Progress.fraction

    class Params(MethodParams):
        k: int = Field(3, ge=1)  # embedding steps per discriminator step
        disc_lr: float = Field(0.01, gt=0)

    def setup(self) -> None:
        dim = self.model.params.embed_dim  # type: ignore[attr-defined]
        self.discriminator = torch.nn.Linear(dim, 1)
        self.embed_params = self.trainable()
        self.embed_opt = build_optimizer(self.train, self.embed_params)
        self.disc_opt = torch.optim.SGD(self.discriminator.parameters(), lr=self.params.disc_lr)  # type: ignore[attr-defined]
        self.steps: list[tuple[int, str, float]] = []  # (global step, which, coefficient)

    def _modality_loss(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        logits = self.discriminator(torch.cat([img_emb, txt_emb])).squeeze(1)
        target = torch.cat([torch.ones(len(img_emb)), torch.zeros(len(txt_emb))])
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)

    def step(self, ctx: StepContext, batch: TrainBatch) -> float:
        coef = progress_coefficient(ctx.progress.fraction)
        k = self.params.k  # type: ignore[attr-defined]
        maybe_kill(f"{ctx.label.split('/')[1] if '/' in ctx.label else ctx.label}:{ctx.progress.epoch}")
        if ctx.progress.step % (k + 1) < k:  # k embedding steps ...
            img_emb = self.model.encode_images(batch.images)
            txt_emb = self.model.encode_texts(batch.text)
            loss = self.loss(img_emb, txt_emb, sims=self.model.similarity(img_emb, txt_emb), labels=batch.labels)
            loss = loss - coef * self._modality_loss(img_emb, txt_emb)
            ctx.check_finite(loss)
            self.embed_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.embed_opt.step()
            which = "embed"
        else:  # ... then one discriminator step on detached embeddings
            with torch.no_grad():
                img_emb = self.model.encode_images(batch.images)
                txt_emb = self.model.encode_texts(batch.text)
            loss = self._modality_loss(img_emb, txt_emb)
            self.disc_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.disc_opt.step()
            which = "disc"
        self.steps.append((ctx.progress.step, which, coef))
        log(f"step {ctx.label} {ctx.progress.step} {which}")
        return float(loss.detach())

    def lr(self) -> float:
        return self.embed_opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"embed": self.embed_opt.state_dict(), "disc": self.disc_opt.state_dict(),
                "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state) -> None:
        self.embed_opt.load_state_dict(state["embed"])
        self.disc_opt.load_state_dict(state["disc"])
        self.discriminator.load_state_dict(state["discriminator"])


class OfflineMethod(GradientMethod):
    """The gradient method plus a hinge over each batch image's offline candidates."""

    class Params(MethodParams):
        weight: float = Field(1.0, ge=0)
        margin: float = Field(0.2, ge=0)

    def setup(self) -> None:
        super().setup()
        self.seen_artifacts: list[str] = []
        log(f"setup {weights_sum(self.model)!r}")

    def step(self, ctx: StepContext, batch: TrainBatch) -> float:
        maybe_kill(f"{ctx.label.split('/')[1] if '/' in ctx.label else ctx.label}:{ctx.progress.epoch}")
        negatives = ctx.artifacts["negatives"]["i2t"]  # (N_train_images, k) caption indices
        if ctx.progress.step == 0:
            self.seen_artifacts.append(str(tuple(negatives.shape)))
            log(f"artifact {ctx.label} {tuple(negatives.shape)}")
        loss = self.retrieval_loss(batch)
        img_emb = self.model.encode_images(batch.images)
        txt_emb = self.model.encode_texts(batch.text)
        cand = negatives[batch.image_ids.cpu(), 0]  # each batch image's hardest offline caption
        cand_emb = self.model.encode_texts(ctx.train.text_batch(cand.numpy()).to(ctx.device))
        first = torch.stack([torch.nonzero(batch.labels[1] == i)[0, 0] for i in range(len(batch.images))])
        s_pos = self.model.pair_scores(img_emb, txt_emb[first])
        s_neg = self.model.pair_scores(img_emb, cand_emb)
        loss = loss + self.params.weight * torch.relu(self.params.margin - s_pos + s_neg).mean()  # type: ignore[attr-defined]
        ctx.check_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        log(f"step {ctx.label} {ctx.progress.step} offline")
        return float(loss.detach())


class CountingMiner(HardestNegatives):
    def mine(self, model, split, **kw):
        out = super().mine(model, split, **kw)
        log(f"mine {split.n_images} {split.n_captions}")
        maybe_kill("mine")
        return out


def register() -> None:
    """Register the test-only components (idempotent)."""
    for name, cls in (("test_alternating", AlternatingMethod), ("test_offline", OfflineMethod)):
        if name not in METHODS:
            METHODS.register(name, cls)
    if "test_counting" not in MINERS:
        MINERS.register("test_counting", CountingMiner)
