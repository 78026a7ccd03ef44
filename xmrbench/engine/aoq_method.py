"""AOQ's second-round training (Chen, Deng, Luo, "Adaptive Offline Quintuplet Loss for
Image-Text Matching", ECCV 2020, Sec. 3 and 4.2), for any retrieval model of the zoo.

Two rounds
----------
Round one trains a model with the online triplet loss (Eq. 2). Its selected weights
score every training image against every training caption; each image keeps its top
captions of other images and each caption its top other images (the miner
``offline_candidates``, ``engine/miners.py``; the runner stores the lists as an
artifact shared by every row that names the same round-one run). Round two trains
from scratch (or, for the Fine-tune ablation, from round one's weights: the row's
``needs.init``) with one of the losses of ``core/losses/aoq``:

- ``online``: Eq. 2, the hardest in-batch negative of each anchor (VSE++'s max violation);
- ``offtri``: Eq. 3, plus one offline hard negative per anchor at margin ``gamma2``;
- ``offquin``: Eq. 4, plus the two derived offline pairs without a common element;
- ``adapoffquin``: Eq. 5, the online hinges weighted by ``beta - (S_off - S_on) / alpha``.

The baselines of the AOQ tables train with ``loss: online`` through this same method,
so baseline and variants share one code path for the online term, and any remedy
(``warmup_epochs``) applies to all of them alike. With ``warmup_epochs: 0`` the online
loss equals :class:`~xmrbench.core.losses.hardest_negative.HardestNegativeLoss` with
margin ``gamma1`` and the same ``positives`` rule (tested).

One step
--------
The batch holds ``P`` captions and their images. For caption ``p`` with image ``i``:

- online hardest negatives from the batch's similarity matrix (the model's own
  ``similarity``, as for the baseline): ``t_on`` among the captions that are not
  positives of ``i``, ``i_on`` among the images that are not positives of ``t``
  (``positives``: ``pair``, the released code's rule, or ``image``);
- ``t_off``: a caption drawn from the first ``h`` entries of image ``i``'s list, ``i_off``
  an image from the first ``h_images`` (None: ``h // 5``) entries of caption ``t``'s list,
  each uniformly (``sampling: uniform``, Sec. 3.2) or from a normal law over the ranks
  (``sampling: normal``, the supplementary material's variant; xmrbench's reading:
  centred on the middle of the list with standard deviation a quarter of its length,
  redrawn outside it); a pair whose ``t_off`` describes ``i_off`` is drawn again
  (Sec. 3.2), up to ``redraws`` times;
- the derived pairs: ``(i_off, t_off)`` and ``(i~_off, t~_off)``, ``i~_off`` the image
  ``t_off`` describes and ``t~_off`` a caption of ``i_off`` drawn uniformly among its
  captions; with ``derived: online`` (Table 3's OnlineQuin) ``(i_on, t_on)`` and
  ``(i~_on, t~_on)`` from the batch instead;
- the offline items are encoded by the model in the same step (one image batch of
  ``2P`` and one caption batch of ``2P``) and scored pair by pair (``pair_scores``).

The loss is summed over the batch (the paper's sums), plus the model's auxiliary term
(VSRN's caption generation), and descended by one optimiser as in
:class:`~xmrbench.engine.training_method.GradientMethod`.

Ablations of Table 3 are parameters: ``online: false`` (OnlyOffline), ``derived:
online`` (OnlineQuin), ``reference: positive`` (w/o OfflineAdap), ``h`` (the top-list
size; images ``h // 5``); Fine-tune is the row's ``needs.init``.

Draws use torch's global generator, which the engine seeds per run and checkpoints,
so a resumed run draws the same negatives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from xmrbench.core.losses.aoq import LOSSES as AOQ_LOSSES
from xmrbench.core.losses.aoq import QuintupletScores
from xmrbench.core.losses.base import hinge, positive_mask
from xmrbench.core.models.base import TrainBatch
from xmrbench.engine.training_method import GradientMethod, MethodParams, StepContext
from xmrbench.errors import TrainingError

AOQLoss = Literal["online", "offtri", "offquin", "adapoffquin"]


class AOQParams(MethodParams):
    """Parameters of AOQ's training (defaults: Sec. 4.2)."""

    hashed_when_set: ClassVar[tuple[str, ...]] = ("candidate_files",)

    loss: AOQLoss = "adapoffquin"
    gamma1: float = Field(0.2, ge=0)  # margin of the online terms
    gamma2: float = Field(0.0, ge=0)  # margin of the offline terms
    alpha: float = Field(0.3, gt=0)
    beta: float = 1.5
    h: int = Field(300, ge=1)  # top-list size for offline captions
    h_images: int | None = Field(None, ge=1)  # for offline images; None: h // 5
    sampling: Literal["uniform", "normal"] = "uniform"
    online: bool = True  # False: Table 3's OnlyOffline (no online terms)
    derived: Literal["offline", "online"] = "offline"  # "online": Table 3's OnlineQuin
    reference: Literal["offline", "positive"] = "offline"  # "positive": w/o OfflineAdap
    positives: Literal["pair", "image"] = "pair"  # in-batch positives of the online terms
    warmup_epochs: int = Field(0, ge=0)  # first epochs: Eq. 1 (summed hinges) for every loss
    candidates: str = "candidates"  # name of the artifact holding the offline lists
    # or the lists as the authors' release stores them (docs/formats/candidates.md):
    # [i2t file, t2i file]; they replace the artifact (a row that reads them needs no round one)
    candidate_files: tuple[str, str] | None = None
    redraws: int = Field(20, ge=0)  # re-draws of an (i_off, t_off) that describe each other

    @model_validator(mode="after")
    def _h_images(self) -> AOQParams:
        if self.h_images is None and self.h // 5 < 1:
            raise ValueError(f"h={self.h} leaves no offline images (h // 5 = 0); set h_images")
        return self

    @property
    def images_h(self) -> int:
        return self.h_images if self.h_images is not None else self.h // 5

    @property
    def offline(self) -> bool:
        """Whether the loss reads offline candidates."""
        return self.loss != "online"


def online_negatives(sims: Tensor, labels: tuple[Tensor, Tensor], positives: str) -> dict[str, Tensor]:
    """Online hardest negatives of every caption of a batch, in pair space.

    ``sims (B_img, B_txt)``; ``labels`` link captions to batch images. Pair ``p`` is
    (image of caption ``p``, caption ``p``). Returns ``(P,)`` tensors: ``pos`` S(i, t);
    ``t_on`` / ``i_on`` the scores of the hardest negative caption of ``i`` and image of
    ``t``; ``t_on_idx`` (a caption position) and ``i_on_idx`` (the pair whose image it
    is); ``has_t`` / ``has_i`` whether the anchor has any negative in the batch.
    """
    img_of = torch.as_tensor(labels[1], device=sims.device).long()  # (P,) batch image of each caption
    pp = sims[img_of]  # (P, P): row p = image of pair p, column q = caption q
    if positives == "pair":
        pos_pp = torch.eye(len(img_of), dtype=torch.bool, device=sims.device)
    else:
        pos_pp = positive_mask(labels, *sims.shape, device=sims.device)[img_of]
    neg_inf = torch.finfo(pp.dtype).min
    row = pp.masked_fill(pos_pp, neg_inf)  # image anchor p: its negative captions
    col = pp.masked_fill(pos_pp, neg_inf).t()  # caption anchor q: rows of negative images
    t_on, t_idx = row.max(dim=1)
    i_on, i_idx = col.max(dim=1)
    has_t = (~pos_pp).any(dim=1)
    has_i = (~pos_pp).any(dim=0)
    return {"pos": pp.diagonal(), "t_on": t_on, "i_on": i_on, "t_on_idx": t_idx, "i_on_idx": i_idx,
            "has_t": has_t, "has_i": has_i, "pp": pp, "pos_pp": pos_pp}


def standard_triplet(pp: Tensor, pos_pp: Tensor, margin: float) -> Tensor:
    """Eq. 1 per pair: the hinges of every in-batch negative of both anchors, summed -> ``(P,)``."""
    pos = pp.diagonal()
    i2t = hinge(margin - pos[:, None] + pp).masked_fill(pos_pp, 0.0).sum(1)
    t2i = hinge(margin - pos[None, :] + pp).masked_fill(pos_pp, 0.0).sum(0)
    return i2t + t2i


def draw_ranks(n: int, width: int, sampling: str) -> Tensor:
    """``n`` ranks in ``[0, width)``: uniform, or normal around the middle (sd width / 4)."""
    if sampling == "uniform":
        return torch.randint(0, width, (n,))
    ranks = torch.empty(n, dtype=torch.long)
    todo = torch.arange(n)
    while len(todo):
        draw = torch.round(torch.randn(len(todo)) * (width / 4) + (width - 1) / 2).long()
        ok = (draw >= 0) & (draw < width)
        ranks[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return ranks


class AOQMethod(GradientMethod):
    """AOQ's losses with offline hard negatives (see the module docstring)."""

    Params = AOQParams
    uses_loss = False  # the objective is Eq. 2-5, set by the method's own Params
    params: AOQParams

    def __init__(self, params: AOQParams, **kw: Any):
        super().__init__(params, **kw)
        self._captions_of: np.ndarray | None = None  # (N_img, cpi) caption indices per image
        self._checked = False
        self._files: tuple[Tensor, Tensor] | None = None

    # --- offline candidates ----------------------------------------------------------

    def candidate_lists(self, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """The artifact's ``i2t`` and ``t2i`` lists (or ``candidate_files``'), checked against
        the training split once."""
        if self.params.candidate_files is not None:
            if self._files is None:
                from xmrbench.data.candidates import read_candidates

                split = ctx.train
                self._files = read_candidates(
                    *self.params.candidate_files, n_images=split.n_images, n_captions=split.n_captions,
                    captions_per_image=split.captions_per_image, min_texts=self.params.h,
                    min_images=self.params.images_h)
                self._check_lists(ctx, *self._files)
                self._checked = True
            return self._files
        name = self.params.candidates
        if name not in ctx.artifacts:
            raise TrainingError(f"loss {self.params.loss!r} samples offline hard negatives, but the row names no "
                                f"artifact {name!r} (needs.artifacts.{name}: the round-one model's candidate lists)",
                                where=ctx.label)
        art = ctx.artifacts[name]
        i2t, t2i = art["i2t"], art["t2i"]
        if not self._checked:
            self._check_lists(ctx, i2t, t2i)
            self._checked = True
        return i2t, t2i

    def _check_lists(self, ctx: StepContext, i2t: Tensor, t2i: Tensor) -> None:
        split = ctx.train
        name = self.params.candidates
        for what, arr, rows, width, key in (
            ("i2t", i2t, split.n_images, self.params.h, "h"),
            ("t2i", t2i, split.n_captions, self.params.images_h, "h_images"),
        ):
            if arr.dim() != 2 or arr.shape[0] != rows:
                raise TrainingError(f"artifact {name!r}: {what} has shape {tuple(arr.shape)}, but the training split "
                                    f"has {rows} {'images' if what == 'i2t' else 'captions'} (the lists were mined "
                                    "on other data)", where=ctx.label)
            if arr.shape[1] < width:
                raise TrainingError(f"artifact {name!r}: {what} keeps {arr.shape[1]} candidates per row, fewer than "
                                    f"method.{key} = {width}", where=ctx.label)
        caption_image = split.caption_image()
        order = np.argsort(caption_image, kind="stable")
        counts = np.bincount(caption_image, minlength=split.n_images)
        if counts.min() < 1:
            raise TrainingError("a training image has no caption; derived pairs need one", where=ctx.label)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._order, self._counts, self._starts = order, counts, starts

    def _caption_of(self, images: Tensor) -> Tensor:
        """A caption of each image, uniformly among its own."""
        counts = torch.from_numpy(self._counts)[images]
        offset = (torch.rand(len(images)) * counts).long().clamp_max(counts - 1)
        return torch.from_numpy(self._order)[torch.from_numpy(self._starts)[images] + offset]

    def sample_offline(self, ctx: StepContext, batch: TrainBatch) -> dict[str, Tensor]:
        """Offline negatives of every caption of the batch (CPU index tensors, ``(P,)``)."""
        i2t, t2i = self.candidate_lists(ctx)
        caption_image = torch.from_numpy(ctx.train.caption_image()).long()
        assert batch.caption_ids is not None
        captions = batch.caption_ids.cpu()
        images = caption_image[captions]
        p = len(captions)
        h, hi, how = self.params.h, self.params.images_h, self.params.sampling
        t_off = i2t[images, draw_ranks(p, h, how)].long()
        i_off = t2i[captions, draw_ranks(p, hi, how)].long()
        clash = caption_image[t_off] == i_off
        for _ in range(self.params.redraws):  # Sec. 3.2: re-sample a derived pair that corresponds
            if not clash.any():
                break
            idx = clash.nonzero(as_tuple=True)[0]
            t_off[idx] = i2t[images[idx], draw_ranks(len(idx), h, how)].long()
            i_off[idx] = t2i[captions[idx], draw_ranks(len(idx), hi, how)].long()
            clash = caption_image[t_off] == i_off
        return {"t_off": t_off, "i_off": i_off, "i_tilde": caption_image[t_off], "t_tilde": self._caption_of(i_off)}

    # --- the objective -----------------------------------------------------------------

    def training_loss(self, ctx: StepContext, batch: TrainBatch) -> Tensor:
        prm, model = self.params, self.model
        assert batch.labels is not None
        img_emb = model.encode_images(batch.images)
        txt_emb = model.encode_texts(batch.text)
        sims = model.similarity(img_emb, txt_emb)
        on = online_negatives(sims, batch.labels, prm.positives)
        if prm.offline:
            self.candidate_lists(ctx)  # fail on the first step, warm-up or not, if the lists do not fit
        if ctx.progress.epoch < prm.warmup_epochs:
            per_pair = standard_triplet(on["pp"], on["pos_pp"], prm.gamma1)
        else:
            per_pair = self._aoq_terms(ctx, batch, img_emb, txt_emb, on)
        loss = per_pair.sum()
        extra = model.auxiliary_loss(batch, img_emb, txt_emb)
        return loss if extra is None else loss + extra

    def _aoq_terms(self, ctx: StepContext, batch: TrainBatch, img_emb: Any, txt_emb: Any,
                   on: Mapping[str, Tensor]) -> Tensor:
        prm, model = self.params, self.model
        assert batch.labels is not None
        # an anchor without negatives in the batch: its online hinge sits at 0 (no gradient)
        pos = on["pos"]
        t_on = torch.where(on["has_t"], on["t_on"], pos - prm.gamma1)
        i_on = torch.where(on["has_i"], on["i_on"], pos - prm.gamma1)
        if not prm.offline:
            return AOQ_LOSSES["online"](QuintupletScores(pos=pos, t_on=t_on, i_on=i_on), gamma1=prm.gamma1)
        draw = self.sample_offline(ctx, batch)
        dev = ctx.device
        img_of = torch.as_tensor(batch.labels[1], device=pos.device).long()
        off_imgs = model.encode_images(ctx.train.image_batch(
            torch.cat([draw["i_off"], draw["i_tilde"]]).numpy()).to(dev))
        off_txts = model.encode_texts(ctx.train.text_batch(
            torch.cat([draw["t_off"], draw["t_tilde"]]).numpy()).to(dev))
        n = len(img_of)
        first, second = torch.arange(n, device=dev), torch.arange(n, 2 * n, device=dev)
        s_t_off = model.pair_scores(img_emb[img_of], off_txts[first])
        s_i_off = model.pair_scores(off_imgs[first], txt_emb)
        if prm.derived == "offline":
            pair_a = model.pair_scores(off_imgs[first], off_txts[first])  # S(i_off, t_off)
            pair_b = model.pair_scores(off_imgs[second], off_txts[second])  # S(i~_off, t~_off)
        else:  # OnlineQuin: (i_on, t_on) and (i~_on, t~_on) from the batch, in pair space
            pp, ti, ii = on["pp"], on["t_on_idx"], on["i_on_idx"]
            pair_a = pp[ii, ti]  # image of pair i_on_idx with caption t_on
            pair_b = pp[ti, ii]  # image of caption t_on with the caption of pair i_on_idx
        scores = QuintupletScores(pos=pos, t_on=t_on, i_on=i_on, t_off=s_t_off, i_off=s_i_off,
                                  pair_a=pair_a, pair_b=pair_b)
        fn = AOQ_LOSSES[prm.loss]
        if prm.loss == "offtri":
            return fn(scores, gamma1=prm.gamma1, gamma2=prm.gamma2, online=prm.online)
        if prm.loss == "offquin":
            return fn(scores, gamma1=prm.gamma1, gamma2=prm.gamma2, online=prm.online)
        return fn(scores, gamma1=prm.gamma1, gamma2=prm.gamma2, alpha=prm.alpha, beta=prm.beta,
                  reference=prm.reference, online=prm.online)
