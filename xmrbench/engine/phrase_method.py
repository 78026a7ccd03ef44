"""Training for phrase localization (two-branch paper, Sec. 3.2-3.3 and 4.1-4.3): the
embedding network by the triplet loss of Eq. 6 on Algorithm 1's mini-batches, the
similarity network by the logistic loss of Eq. 7 on balanced pairs.

The method draws its own mini-batches (:meth:`TrainingMethod.plan_epoch`) from the
training split's phrase-region annotations (``extras["entities"]``;
:mod:`xmrbench.engine.phrase_sampling` says which proposals are positive and negative
for a phrase and how a batch is built). Each step encodes the batch's regions (their
proposal features, the model's image branch) and phrases (the model's text branch, the
phrases processed as captions are).

The embedding network's loss (Eq. 6), with ``d`` the Euclidean distance of the
embeddings, margin ``m`` (0.1) and every hinge ``[.]_+``:

- ``lambda1``: region anchor ``x``, a positive phrase ``y`` (of the chain ``x`` was
  paired with), a negative phrase ``y'`` of the batch from another chain: ``[m + d(x, y)
  - d(x, y')]_+`` (Algorithm 1, step 3a);
- ``lambda2``: phrase anchor ``y``, a positive region ``x``, a negative region ``x'`` of
  ``y``'s image at IoU < 0.3 with it: ``[m + d(x, y) - d(x', y)]_+`` (step 3b);
- ``lambda3`` / ``lambda4``: the neighbourhood constraints of Eq. 4-5 inside the batch:
  regions that are positives of the same chain are neighbours, as are the phrases of a
  chain; a non-neighbour is any other batch region (phrase).

Positives are pairs of a region and a phrase of the chain the region was sampled for.
Every term keeps, per (anchor, positive) pair, the ``top_k`` (30) largest hinges over
its negatives ("keep at most K = 30 triplets with highest nonnegative loss"). The sum
is divided by the number of positive pairs (``reduction: mean``; ``sum`` keeps it).
Paper settings: single-directional lambda1 = 0, lambda2 = 1; bi-directional lambda1 = 1,
lambda2 = 4; the constraints lambda3 = lambda4 = 0.1, which need neighbourhood sampling.
``constraints_from_epoch``: the paper trains 8 epochs with neighbourhood sampling, then
adds the constraint terms for one more epoch; with ``constraints_from_epoch: 9`` the
terms act from the ninth epoch on (None: from the first).

The similarity network's loss: ``log(1 + exp(-z s))`` over the batch's positive (z = +1)
and negative (z = -1) pairs, ``s`` the network's score, averaged over the pairs (as many
negatives as positives, Sec. 3.3). ``margin``, the lambdas and ``top_k`` do not apply to it.

:class:`PhraseCCAMethod` (``phrase_cca``) fits the zoo's CCA in closed form on the
positive region-phrase pairs (Table 1's CCA row, "trained only on positive region-phrase
pairs", Sec. 4.4): each phrase with its reference region, or with ``augment`` with every
positive proposal.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from xmrbench.core.losses.base import neighbour_mask, reduce_loss
from xmrbench.core.losses.bidirectional_ranking import euclidean_distances, ranking_term
from xmrbench.core.models.two_branch import TwoBranchSimilarity
from xmrbench.engine.phrase_sampling import (
    NEG_IOU,
    POS_IOU,
    PhraseBatch,
    PhraseIndex,
    embedding_batches,
    index_phrases,
    similarity_batches,
)
from xmrbench.engine.training_method import GradientMethod, MethodParams, StepContext, TrainingMethod
from xmrbench.errors import DataError, TrainingError


class PhraseLocalizationParams(MethodParams):
    """Algorithm 1's options and Eq. 6's weights (module docstring)."""

    augment: bool = False  # positive region augmentation (IoU >= pos_iou)
    neighbourhood_sampling: bool = False  # Algorithm 1, step 3c (embedding network)
    pos_iou: float = Field(POS_IOU, ge=0.5, le=1)
    neg_iou: float = Field(NEG_IOU, ge=0, le=0.5)
    top_k: Annotated[int, Field(ge=1)] | None = 30
    margin: float = Field(0.1, ge=0)
    lambda1: float = Field(1.0, ge=0)
    lambda2: float = Field(4.0, ge=0)
    lambda3: float = Field(0.0, ge=0)
    lambda4: float = Field(0.0, ge=0)
    constraints_from_epoch: int | None = Field(None, ge=1)
    reduction: Literal["sum", "mean"] = "mean"

    @model_validator(mode="after")
    def _consistent(self) -> PhraseLocalizationParams:
        if not any((self.lambda1, self.lambda2, self.lambda3, self.lambda4)):
            raise ValueError("at least one of lambda1..lambda4 must be positive")
        if (self.lambda3 or self.lambda4) and not self.neighbourhood_sampling:
            raise ValueError("the neighbourhood constraints (lambda3, lambda4) need neighbourhood_sampling: true "
                             "(a batch must hold two positives of a region or a phrase)")
        return self


class PhraseLocalizationMethod(GradientMethod):
    """Region-phrase training of the two-branch networks (module docstring)."""

    Params = PhraseLocalizationParams
    models = ("two_branch_embedding", "two_branch_similarity")
    uses_loss = False
    params: PhraseLocalizationParams

    def __init__(self, params: PhraseLocalizationParams, **kw: Any):
        super().__init__(params, **kw)
        self.similarity_network = isinstance(self.model, TwoBranchSimilarity)
        self._index: PhraseIndex | None = None
        self._index_of: int | None = None

    # --- the epoch's mini-batches -----------------------------------------------------

    def phrase_index(self, train: Any) -> PhraseIndex:
        """The training split's phrases (indexed once per split)."""
        ents = train.split.extras.get("entities")
        if ents is None:
            raise DataError(f"split {train.name!r} has no phrase-region annotations (extras 'entities'); phrase "
                            "localization trains on an entities dataset (data.name: entities or synthetic_entities)")
        if self._index is None or self._index_of != id(ents):
            p = self.params
            self._index = index_phrases(ents, pos_iou=p.pos_iou, neg_iou=p.neg_iou)
            self._index_of = id(ents)
        return self._index

    def plan_epoch(self, train: Any, rng: np.random.Generator) -> list[PhraseBatch]:
        index = self.phrase_index(train)
        p, size = self.params, self.train.batch_size
        if self.similarity_network:
            return similarity_batches(index, size, rng, augment=p.augment)
        return embedding_batches(index, size, rng, augment=p.augment, neighbourhood=p.neighbourhood_sampling)

    # --- one step ---------------------------------------------------------------------

    def training_loss(self, ctx: StepContext, batch: Any) -> Tensor:
        if not isinstance(batch, PhraseBatch):
            raise TrainingError("training method 'phrase_localization' steps on its own region-phrase batches")
        index = self.phrase_index(ctx.train)
        ents = ctx.train.split.extras["entities"]
        model = self.model
        phr_emb = model.encode_texts(ctx.train.strings_batch([index.texts[q] for q in batch.phrases]).to(ctx.device))
        if self.similarity_network:
            reg_emb = model.encode_images(_features(ents, batch.regions, ctx.device))
            return similarity_loss(model, reg_emb, phr_emb, batch)
        negatives = [index.negatives[q] for q in batch.phrases]
        rows, inverse = np.unique(np.concatenate([batch.regions, *negatives]), return_inverse=True)
        all_emb = model.encode_images(_features(ents, rows, ctx.device))
        reg_emb = all_emb[torch.from_numpy(inverse[:len(batch.regions)]).to(ctx.device)]
        neg_index, neg_valid = _padded(inverse[len(batch.regions):], [len(n) for n in negatives], ctx.device)
        chains = torch.from_numpy(index.chain[batch.phrases]).to(ctx.device)
        p = self.params
        constraints = p.constraints_from_epoch is None or ctx.progress.epoch + 1 >= p.constraints_from_epoch
        return embedding_loss(reg_emb, phr_emb, all_emb, batch, chains, neg_index, neg_valid, margin=p.margin,
                              lambda1=p.lambda1, lambda2=p.lambda2, lambda3=p.lambda3 if constraints else 0.0,
                              lambda4=p.lambda4 if constraints else 0.0, top_k=p.top_k, reduction=p.reduction)


class PhraseCCAParams(MethodParams):
    """Which pairs CCA is fitted on (module docstring)."""

    augment: bool = False  # every positive proposal (IoU >= pos_iou), not only the reference region
    pos_iou: float = Field(POS_IOU, ge=0.5, le=1)


class PhraseCCAMethod(TrainingMethod):
    """CCA fitted once on the training split's positive region-phrase pairs."""

    Params = PhraseCCAParams
    gradient_based = False
    models = ("cca",)
    uses_loss = False
    params: PhraseCCAParams

    def fit(self, split: Any) -> None:
        ents = split.split.extras.get("entities")
        if ents is None:
            raise DataError(f"split {split.name!r} has no phrase-region annotations (extras 'entities'); CCA on "
                            "region-phrase pairs fits on an entities dataset")
        index = index_phrases(ents, pos_iou=self.params.pos_iou)
        rows, phrases = [], []
        for q in range(len(index)):
            regions = np.union1d(index.positives[q], [index.reference[q]]) if self.params.augment \
                else [index.reference[q]]
            rows.extend(int(r) for r in regions)
            phrases.extend([q] * len(regions))
        order = np.argsort(rows, kind="stable")
        rows_sorted = np.asarray(rows)[order]
        unique, inverse = np.unique(rows_sorted, return_inverse=True)
        feats = _features(ents, unique, torch.device("cpu"))[torch.from_numpy(inverse)]
        texts = split.strings_batch([index.texts[phrases[i]] for i in order]).vectors
        self.model.fit_pairs(feats, texts)


def _features(ents: Any, rows: np.ndarray, device: torch.device) -> Tensor:
    """Proposal features of the (sorted) global ``rows``."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(ents.proposal_feats[rows], dtype=np.float32))).to(device)


def _padded(flat: np.ndarray, lengths: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Ragged lists (concatenated in ``flat``) as a ``(n, max_len)`` index matrix and its mask."""
    n, width = len(lengths), max(lengths, default=0)
    index = np.zeros((n, max(width, 1)), dtype=np.int64)
    valid = np.zeros((n, max(width, 1)), dtype=bool)
    start = 0
    for i, length in enumerate(lengths):
        index[i, :length] = flat[start:start + length]
        valid[i, :length] = True
        start += length
    return torch.from_numpy(index).to(device), torch.from_numpy(valid).to(device)


def positive_mask(batch: PhraseBatch, chains: Tensor) -> Tensor:
    """``(R, P)``: region ``r`` and phrase ``p`` are positive when ``r`` was paired with a
    phrase of ``p``'s chain."""
    n_r, n_p = len(batch.regions), len(batch.phrases)
    paired = torch.zeros(n_r, n_p, dtype=torch.bool, device=chains.device)
    pairs = torch.from_numpy(batch.pairs).to(chains.device)
    paired[pairs[:, 0], pairs[:, 1]] = True
    same_chain = chains[:, None] == chains[None, :]  # (P, P)
    return (paired.float() @ same_chain.float()) > 0


def embedding_loss(reg_emb: Tensor, phr_emb: Tensor, all_emb: Tensor, batch: PhraseBatch, chains: Tensor,
                   neg_index: Tensor, neg_valid: Tensor, *, margin: float, lambda1: float, lambda2: float,
                   lambda3: float, lambda4: float, top_k: int | None, reduction: str) -> Tensor:
    """Eq. 6 on one batch (module docstring). ``reg_emb (R, D)`` the batch regions,
    ``phr_emb (P, D)`` its phrases, ``all_emb`` every encoded proposal, ``chains (P,)``,
    ``neg_index``/``neg_valid (P, N)`` each phrase's negative proposals (rows of
    ``all_emb``). Returns a 0-d tensor."""
    pos = positive_mask(batch, chains)
    terms: list[Tensor] = [reg_emb.new_zeros(())]
    d_xy = euclidean_distances(reg_emb, phr_emb)  # (R, P)
    if lambda1:
        terms.append(lambda1 * ranking_term(d_xy, pos, ~pos, margin, top_k))
    if lambda2:
        # d(x', y) for each phrase y and each of its negatives x'
        d_neg = torch.linalg.vector_norm(all_emb[neg_index] - phr_emb[:, None, :], dim=-1)  # (P, N)
        r_idx, p_idx = pos.nonzero(as_tuple=True)
        viol = F.relu(margin + d_xy[r_idx, p_idx][:, None] - d_neg[p_idx])
        viol = viol.masked_fill(~neg_valid[p_idx], 0.0)
        if top_k is not None and top_k < viol.shape[1]:
            viol = viol.topk(top_k, dim=1).values
        terms.append(lambda2 * viol.sum())
    for weight, emb, mask in ((lambda3, reg_emb, pos), (lambda4, phr_emb, pos.T)):
        if weight:
            neighbours = neighbour_mask(mask)
            eye = torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
            terms.append(weight * ranking_term(euclidean_distances(emb, emb), neighbours, ~neighbours & ~eye,
                                               margin, top_k))
    return reduce_loss(torch.stack(terms).sum(), int(pos.sum()), reduction)


def similarity_loss(model: Any, reg_emb: Tensor, phr_emb: Tensor, batch: PhraseBatch) -> Tensor:
    """Eq. 7 on the batch's positive and negative pairs, averaged over the pairs."""
    device = reg_emb.device
    pos = torch.from_numpy(batch.pairs).to(device)
    neg = torch.from_numpy(batch.negatives).to(device)
    s_pos = model.pair_scores(reg_emb[pos[:, 0]], phr_emb[pos[:, 1]])
    s_neg = model.pair_scores(reg_emb[neg[:, 0]], phr_emb[neg[:, 1]])
    return (F.softplus(-s_pos).sum() + F.softplus(s_neg).sum()) / (len(pos) + len(neg))
