"""A3VSE's training procedure (Huang, Kang, Liu, Chang, Hauptmann, "Annotation Efficient
Cross-Modal Retrieval with Adversarial Attentive Alignment", ACM MM 2019, Sec. 3.4 and 4.3).

Each step draws one mini-batch of annotated pairs ``(v, t)`` (the cell's main stream
over the ``train`` split) and one mini-batch of pseudo pairs ``(v^u, s)`` (the stream
``pseudo``: images with their machine-made semantics), embeds all four with the
model's shared encoders ``G^v`` and ``G^t`` (:class:`~xmrbench.core.models.a3vse.A3VSE`)
and descends, in one backward pass (Eq. 9-10)::

    l^A3VSE = l^tri(v, t; v^u, s) + l^adv(v, v^u, t, s; p)

``l^tri`` is :class:`~xmrbench.core.losses.a3vse.A3VSETripletLoss` (Eq. 2-3) and
``l^adv`` the ``loss`` of :class:`~xmrbench.core.losses.a3vse.A3VSEAdversary` (Eq.
4-8): six domain discriminators behind a gradient reversal layer whose coefficient
``gamma(p)`` follows the fraction ``p`` of training steps done. One optimiser
(``train.optimizer``, Adam in the paper, at ``train.lr`` with ``train.weight_decay``)
updates the encoders and the discriminators together, gradients clipped to norm
``train.grad_clip`` over both (Sec. 4.3: Adam, weight decay 1e-6, clipping at 2.0);
the reversal makes it the min-max of Eq. 10.

Where the pseudo pairs come from
--------------------------------
Sec. 3.1 defines the un-annotated collection ``D^u`` as images without captions;
Sec. 3.4 samples "a mini-batch of (v, t) from D^l and (v^u, s) from D^u" in each
iteration; Sec. 4.1 builds the sparse corpora by trimming the training set to a
fraction of its images, so ``D^u`` is the training images left out (the split
``unannotated`` of ``data.sparse_images``, ``docs/data.md``); and Sec. 4.3 says "for
every un-annotated image v_j^u in D_u, we generate s_j": the detector's "attribute
class" words, sorted by confidence and concatenated into one sentence (the split's
``extras["semantics"]``). ``pseudo_images: unannotated`` (the default) is that reading.

At 100 % of the annotations (the last rows of Tables 2 and 4) every training image is
annotated and ``D^u`` is empty. The paper prints A3VSE there but says nowhere where its
pseudo pairs then come from: no sentence of Sec. 3 or 4 covers the case. So a cell
with the default and no un-annotated pool stops with a ``TrainingError`` naming the
run, before its first step. ``pseudo_images: train`` is the explicit choice for such
rows: the pseudo stream draws the annotated training images themselves, each paired
with its own detected regional semantics (the detector runs on any image; only the
captions are scarce). That is xmrbench's choice, not the paper's statement; a recipe
that takes it says so in its notes.

Readings the paper leaves to us
-------------------------------
- ``s`` is tokenised with the cell's vocabulary, as a caption is, and encoded by the
  same ``G^t`` (Sec. 3.2: "encode it ... via the shared F^t"), truncated like captions
  (``data.max_caption_len``). The A3VSE recipes build that vocabulary from the
  captions and the machine-made texts (``data.vocab_texts: [semantics, tags]``): Sec.
  4.6 encodes ``s_g`` "with the shared word embedding matrix" and compares the
  vocabularies of ``s`` and ``s_g``, so their words have embeddings of their own. With
  the captions' vocabulary alone, a word no caption uses becomes ``<unk>`` (on the small
  synthetic world 6 % of the regional-semantics tokens, 72 % of the tag tokens).
- The pseudo batch has ``pseudo_batch_size`` images (None: ``train.batch_size``; the
  paper gives one batch size, 128). The pseudo stream has its own random order per
  epoch; when it has fewer batches than the main stream it starts over.
- ``p`` of ``gamma(p) = 2 / (1 + exp(-eta p)) - 1`` grows per step (``Progress.fraction``),
  where Sec. 4.3 says "in proportion to the training epoch".

Table 5's ablations are parameters, applied in one place (:func:`adversary_weights`
and :meth:`A3VSEMethod.objective`):

- "No s" (``pseudo_text: none``): the regional semantics are removed from the input.
  Every term that reads ``s`` goes (the pseudo triplet term of Eq. 3 and the
  discriminators ``ts``, ``v^u s``, ``v s``); the annotated triplet term keeps its
  weight ``beta``, and the un-annotated images still enter the discriminators that need
  no ``s`` (``v v^u``, ``v^u t``). The paper calls the result "the vanilla model";
  with ``adversarial: false`` as well it is the encoders trained on ``(v, t)`` alone.
- "Swap s with s_g" (``pseudo_text: global``): each pseudo image is paired with its
  image-level tags (``extras["tags"]``) scoring at least ``global_threshold`` (0.3, Sec.
  4.6), most confident first, as one sentence, encoded by the same ``G^t``.
- "Without attention": the model's ``pooling: mean`` (``xmrbench/core/models/a3vse.py``).
- "Without L_adv" (``adversarial: false``): all six discriminators off, ``l^tri`` alone.
- "Without l^intra / l^cross / l^trans" (``align_intra`` / ``align_cross`` /
  ``align_trans: false``): the two discriminators of that alignment (Eq. 5, 6, 7) off.

The defaults of the margins, ``beta`` and the six ``lambda`` are Sec. 4.3's; the
fields are those of ``A3VSETripletLoss.Params`` and ``A3VSEAdversary.Params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from xmrbench.core.losses.a3vse import DOMAIN_PAIRS, A3VSEAdversary, A3VSETripletLoss, AdversarialTerms
from xmrbench.core.models.a3vse import A3VSE
from xmrbench.core.models.base import TextBatch, TrainBatch
from xmrbench.data.sparse import UNANNOTATED
from xmrbench.engine.training_method import (
    GradientMethod,
    MethodParams,
    StepContext,
    Stream,
    build_optimizer,
    build_scheduler,
)
from xmrbench.errors import TrainingError

PSEUDO = "pseudo"
"""Name of the stream of pseudo pairs ``(v^u, s)`` in ``TrainBatch.streams``."""

#: Eq. 5-7: each alignment of Table 5's ablations and its two discriminators
ALIGNMENTS: dict[str, tuple[str, ...]] = {
    "align_intra": ("vvu", "ts"),
    "align_cross": ("vt", "vus"),
    "align_trans": ("vs", "vut"),
}

#: pseudo_text -> the per-image extras array its texts are made from
_TEXT_EXTRAS = {"regional": "semantics", "global": "tags", "none": None}

_EMPTY_POOL = (
    "the un-annotated pool is empty: every training image is annotated (data.sparse_images unset or 1). "
    "A3VSE samples its pseudo pairs (v^u, s) from un-annotated images (Sec. 3.4, 4.3), and its paper does not "
    "say where they come from at 100% of the annotations; set method.pseudo_images: train to pair the "
    "annotated training images with their own regional semantics, or keep a fraction with data.sparse_images"
)


class A3VSEParams(A3VSETripletLoss.Params, A3VSEAdversary.Params, MethodParams):
    """The objective's parameters (the triplet loss's and the adversary's, Sec. 4.3
    defaults), where the pseudo pairs come from, and Table 5's ablation switches."""

    pseudo_images: Literal["unannotated", "train"] = "unannotated"
    pseudo_batch_size: int | None = Field(None, ge=2)  # None: train.batch_size
    pseudo_text: Literal["regional", "global", "none"] = "regional"
    global_threshold: float = Field(0.3, ge=0, le=1)  # tags kept as s_g (pseudo_text: global)
    adversarial: bool = True
    align_intra: bool = True
    align_cross: bool = True
    align_trans: bool = True


def adversary_weights(params: A3VSEParams) -> dict[str, float]:
    """The weight of each discriminator after Table 5's switches: its ``lambda``, or 0
    when the adversarial objective, its alignment or (for those reading ``s``) the
    semantics are switched off."""
    values = params.model_dump()
    out = {}
    for group, names in ALIGNMENTS.items():
        for name in names:
            reads_s = "s" in DOMAIN_PAIRS[name]
            on = params.adversarial and values[group] and not (reads_s and params.pseudo_text == "none")
            out[name] = float(values[f"lambda_{name}"]) if on else 0.0
    return out


def pseudo_texts(params: A3VSEParams, extras: dict[str, Any]) -> list[str]:
    """The text ``s`` (or ``s_g``) of each image of a pseudo batch, from its extras."""
    if params.pseudo_text == "regional":
        return [str(text) for text in extras["semantics"]]
    texts = []
    for tags in extras["tags"]:  # [[tag, score], ...]; most confident first
        kept = [(float(score), str(tag)) for tag, score in tags if float(score) >= params.global_threshold]
        kept.sort(key=lambda pair: -pair[0])  # stable: ties keep the listed order
        texts.append(" ".join(tag for _, tag in kept))
    return texts


@dataclass
class A3VSEObjective:
    """One step's terms: ``triplet`` (``l^tri``, 0-d) and ``adversarial`` (the adversary's
    terms, or None when every discriminator is off); ``total`` is what the step descends."""

    triplet: Tensor
    adversarial: AdversarialTerms | None

    @property
    def total(self) -> Tensor:
        return self.triplet if self.adversarial is None else self.triplet + self.adversarial.loss


class A3VSEMethod(GradientMethod):
    """A3VSE's joint triplet and adversarial training (see the module docstring)."""

    Params = A3VSEParams
    models = ("a3vse",)
    reads_epoch_budget = True  # a coefficient ramped over the run's fraction p
    uses_loss = False  # the objective is Eq. 9, set by the method's own Params
    params: A3VSEParams

    def __init__(self, params: A3VSEParams, **kw: Any):
        super().__init__(params, **kw)
        if not isinstance(self.model, A3VSE):
            raise TrainingError(f"training method 'a3vse' trains an A3VSE model, not a {type(self.model).__name__}")
        values = params.model_dump()
        weights = adversary_weights(params)
        self.triplet = A3VSETripletLoss(A3VSETripletLoss.Params(
            **{key: values[key] for key in A3VSETripletLoss.Params.model_fields}))
        self.adversary_params = A3VSEAdversary.Params(**{
            **{key: values[key] for key in A3VSEAdversary.Params.model_fields},
            **{f"lambda_{name}": w for name, w in weights.items()},  # after Table 5's switches
        })
        self.reads_text = params.pseudo_text != "none"  # s (or s_g) enters the objective
        self.adversarial = any(w > 0 for w in weights.values())
        reads_images = any(w > 0 for name, w in weights.items() if "vu" in DOMAIN_PAIRS[name])
        self.needs_pseudo = self.reads_text or reads_images

    def streams(self) -> dict[str, Stream]:
        if not self.needs_pseudo:  # no term reads v^u or s
            return {}
        text = _TEXT_EXTRAS[self.params.pseudo_text]
        split = UNANNOTATED if self.params.pseudo_images == "unannotated" else "train"
        return {PSEUDO: Stream(split=split, kind="images", batch_size=self.params.pseudo_batch_size,
                               extras=(text,) if text else (), absent=_EMPTY_POOL if split == UNANNOTATED else "")}

    def setup(self) -> None:
        device = next(self.model.parameters()).device
        self.adversary = A3VSEAdversary(self.adversary_params, dim=self.model.params.embed_dim).to(device)
        self.params_ = self.trainable(self.model, self.adversary)  # one optimiser: encoders and discriminators
        self.optimizer = build_optimizer(self.train, self.params_)
        self.scheduler = build_scheduler(self.train, self.optimizer)

    def semantics_batch(self, ctx: StepContext, pseudo: TrainBatch) -> TextBatch:
        """The pseudo batch's texts as token ids, processed like the training captions."""
        if ctx.train is None:
            raise TrainingError("the A3VSE method needs the training split in its step context", where=ctx.label)
        return ctx.train.strings_batch(pseudo_texts(self.params, pseudo.extras)).to(ctx.device)

    def objective(self, ctx: StepContext, batch: TrainBatch) -> A3VSEObjective:
        """Eq. 9 on one annotated batch and its pseudo batch (``batch.streams["pseudo"]``)."""
        model = self.model
        img_emb = model.encode_images(batch.images)
        txt_emb = model.encode_texts(batch.text)
        sims = model.similarity(img_emb, txt_emb)
        pseudo = batch.streams.get(PSEUDO)
        if pseudo is None and self.needs_pseudo:
            raise TrainingError(f"the batch has no {PSEUDO!r} stream of pseudo pairs", where=ctx.label)
        img_u_emb = model.encode_images(pseudo.images) if pseudo is not None else None
        sem_emb = model.encode_texts(self.semantics_batch(ctx, pseudo)) if pseudo is not None and self.reads_text else None
        if img_u_emb is not None and sem_emb is not None:
            triplet = self.triplet(img_emb, txt_emb, img_u_emb, sem_emb, sims=sims, labels=batch.labels)
        else:  # no s: Eq. 3 without its pseudo term
            triplet = self.params.beta * self.triplet.annotated(img_emb, txt_emb, sims=sims, labels=batch.labels)
        adversarial = None
        if self.adversarial:
            adversarial = self.adversary(img_emb, img_u_emb, txt_emb, sem_emb, progress=ctx.progress.fraction)
        return A3VSEObjective(triplet, adversarial)

    def training_loss(self, ctx: StepContext, batch: TrainBatch) -> torch.Tensor:
        return self.objective(ctx, batch).total

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "adversary": self.adversary.state_dict()}

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        self.adversary.load_state_dict(state["adversary"])
