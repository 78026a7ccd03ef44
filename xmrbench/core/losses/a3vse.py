"""A3VSE's training objective (the A3VSE paper, Sec. 3.3-3.4, Eq. 2-10): a
beta-weighted triplet loss over annotated and pseudo pairs, and six domain
discriminators trained through a gradient reversal layer.

Four domains enter, all embedded by the model's shared encoders
(:mod:`xmrbench.core.models.a3vse`): annotated images ``v`` and their captions ``t``
(pairs ``(v, t)``), un-annotated images ``v^u`` and their regional semantics ``s``
(pseudo pairs ``(v^u, s)``).

**Triplet alignment** (:class:`A3VSETripletLoss`, Eq. 2-3)::

    l^P(A, B; alpha) = 1/L sum_i [alpha - S(a_i, b_i) + S(a_i, b^)]_+ + [alpha - S(a_i, b_i) + S(a^, b_i)]_+
    l^tri = beta l^P(G^v(v), G^t(t); alpha_vt) + (1 - beta) l^P(G^v(v^u), G^t(s); alpha_vs)

with ``b^`` and ``a^`` the hardest negatives of the batch. Eq. 3 prints ``G^v(t)`` for
the text branch; it means ``G^t(t)``. Defaults (Sec. 4.3): ``alpha_vt = 0.2``,
``alpha_vs = 0.3``, ``beta = 0.8``.

**Sum or mean over the batch** (``triplet_reduction``). Eq. 2 prints ``1/L``, but the
paper applies the loss "as in [6]", VSE++, whose loss sums the hinges over the batch,
and it gives the six adversarial weights (summing to 1.9) on the scale of that sum.
Read literally, the mean makes the adversarial gradient on the encoders two to five
times the triplet's once ``gamma(p)`` nears 1; the encoders then never leave the
near-collapsed state every such model starts in (all images at cosine ~0.95 to each
other), and retrieval stays at chance. With the sum the adversary acts as the mild
regulariser the paper's ablation shows (Table 5: removing ``L_adv`` costs 1.1 R@1).
So ``sum`` is the default and ``mean`` the literal option; docs/errata.md holds the
measurements.

**Adversarial alignment** (:class:`A3VSEAdversary`, Eq. 4-8). Each discriminator
``D`` outputs the probability that a feature comes from the first of its two domains
A and B, and its log-likelihood is (Eq. 4)::

    l^d(A, B) = 1/|A| sum_i log D(a_i) + 1/|B| sum_j log(1 - D(b_j))

Six pairs of domains, with their weights (Sec. 4.3): intra-modal (Eq. 5) ``v / v^u``
(``lambda_vvu = 0.2``) and ``t / s`` (``lambda_ts = 0.1``); cross-modal (Eq. 6)
``v / t`` (``lambda_vt = 0.5``) and ``v^u / s`` (``lambda_vus = 0.5``); transitive
(Eq. 7) ``v / s`` (``lambda_vs = 0.3``) and ``v^u / t`` (``lambda_vut = 0.3``).
``l^adv = sum of lambda_x l^d_x`` (Eq. 8) and ``l^A3VSE = l^adv + l^tri`` (Eq. 9).

The min-max of Eq. 10 (encoders minimise ``l^A3VSE``, discriminators maximise it) is
done in one backward pass, as with the gradient reversal layer of Ganin and
Lempitsky: the discriminators minimise ``-l^adv`` (the ``loss`` of
:class:`AdversarialTerms`, a sum of weighted binary cross-entropies), and their inputs
pass through :func:`~xmrbench.core.reversal.reverse_gradient` with coefficient
``gamma(p) = 2 / (1 + exp(-eta p)) - 1`` (``eta = 10``, ``p`` the fraction of training
done), so the encoders receive ``+gamma(p)`` times the gradient of ``l^adv`` and descend
on it. A training step therefore backpropagates ``l^tri + adversary(...).loss``.

The discriminator architecture is not given in the paper. Each is a small MLP on an
H-dimensional embedding: ``Linear(H, disc_hidden) -> ReLU -> Linear(disc_hidden, 1)``
giving a logit, ``disc_hidden = 512`` (the paper's H) by default, Xavier-uniform
weights like the rest of the network (Sec. 4.3). One hidden layer lets a
discriminator tell domains apart by more than a shift of their means (which is all a
linear one sees on unit-norm embeddings) while staying small next to the encoders, so
it does not overpower them early; ``disc_hidden: 0`` makes it linear (logistic
regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from xmrbench.core.losses.base import Labels
from xmrbench.core.losses.hardest_negative import HardestNegativeLoss
from xmrbench.core.reversal import progress_coefficient, reverse_gradient
from xmrbench.params import Params

# ---------------------------------------------------------------------------------
# Triplet alignment (Eq. 2-3)
# ---------------------------------------------------------------------------------


class A3VSETripletLoss(nn.Module):
    """``l^tri`` of Eq. 3: the hardest-negative triplet loss ``l^P`` of Eq. 2 (summed or
    averaged over the pairs, ``triplet_reduction``; both directions) on the annotated pairs at margin ``alpha_vt``, weighted by
    ``beta``, plus the same on the pseudo (image, regional semantics) pairs at margin
    ``alpha_vs``, weighted by ``1 - beta``.

    ``positives`` is :class:`~xmrbench.core.losses.base.TripletParams`'s rule for which
    batch items are positives when ``labels`` are given.
    """

    class Params(Params):
        alpha_vt: float = Field(0.2, ge=0)  # margin of the image-text pairs
        alpha_vs: float = Field(0.3, ge=0)  # margin of the image-semantics pairs
        beta: float = Field(0.8, ge=0, le=1)  # weight of the annotated pairs
        triplet_reduction: Literal["sum", "mean"] = "sum"  # over the batch's pairs (module docstring)
        positives: Literal["image", "pair"] = "image"

    def __init__(self, params: A3VSETripletLoss.Params):
        super().__init__()
        self.params = params
        rule = dict(reduction=params.triplet_reduction, positives=params.positives)
        self.annotated = HardestNegativeLoss(HardestNegativeLoss.Params(margin=params.alpha_vt, **rule))
        self.pseudo = HardestNegativeLoss(HardestNegativeLoss.Params(margin=params.alpha_vs, **rule))

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        img_u_emb: Tensor,
        sem_emb: Tensor,
        *,
        sims: Tensor | None = None,
        labels: Labels | None = None,
        sims_u: Tensor | None = None,
        labels_u: Labels | None = None,
    ) -> Tensor:
        """Annotated pairs ``img_emb (B_img, H)``, ``txt_emb (B_txt, H)`` and pseudo pairs
        ``img_u_emb (B_u, H)``, ``sem_emb (B_u, H)`` (L2-normalised); ``sims`` / ``sims_u``
        (their similarity matrices) replace the dot products if given; ``labels`` /
        ``labels_u`` pair items as in :mod:`xmrbench.core.losses.base` (None: item i with
        item i). Returns ``l^tri`` as a 0-d tensor."""
        beta = self.params.beta
        annotated = self.annotated(img_emb, txt_emb, sims=sims, labels=labels)
        pseudo = self.pseudo(img_u_emb, sem_emb, sims=sims_u, labels=labels_u)
        return beta * annotated + (1.0 - beta) * pseudo


# ---------------------------------------------------------------------------------
# Adversarial alignment (Eq. 4-8, 10)
# ---------------------------------------------------------------------------------

#: discriminator name -> (domain A, domain B): D(x) is the probability that x is from A
DOMAIN_PAIRS: dict[str, tuple[str, str]] = {
    "vvu": ("v", "vu"),  # intra-modal, Eq. 5
    "ts": ("t", "s"),
    "vt": ("v", "t"),  # cross-modal, Eq. 6
    "vus": ("vu", "s"),
    "vs": ("v", "s"),  # transitive, Eq. 7
    "vut": ("vu", "t"),
}


def domain_log_likelihood(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Eq. 4 from a discriminator's logits on domain A ``(N_a,)`` and domain B ``(N_b,)``
    (``D = sigmoid(logit)``): ``mean log D(a) + mean log(1 - D(b))``, a 0-d tensor <= 0."""
    return F.logsigmoid(logits_a).mean() + F.logsigmoid(-logits_b).mean()


class DomainDiscriminator(nn.Module):
    """``(N, H)`` features -> ``(N,)`` logits of "from domain A"; an MLP with one hidden
    ReLU layer of ``hidden`` units, or a linear map if ``hidden == 0``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(dim, 1)
        for layer in self.net.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, feats: Tensor) -> Tensor:
        return self.net(feats).squeeze(-1)


@dataclass
class AdversarialTerms:
    """What :class:`A3VSEAdversary` returns: ``loss`` (0-d, ``-l^adv``, minimised by the
    discriminators and, through the reversal, maximised by the encoders), the unweighted
    log-likelihoods ``l^d`` of Eq. 4 by discriminator name, and the reversal coefficient."""

    loss: Tensor
    log_likelihood: dict[str, Tensor]
    coef: float


class A3VSEAdversary(nn.Module):
    """The six domain discriminators of Eq. 5-7 behind a gradient reversal layer.

    ``adversary(img_emb, img_u_emb, txt_emb, sem_emb, progress=p)`` takes the embeddings
    of the four domains, ``(N_v, H)``, ``(N_vu, H)``, ``(N_t, H)``, ``(N_s, H)`` (batch
    sizes may differ), and the fraction of training done ``p`` in [0, 1]. A weight of 0
    switches its discriminator off (not evaluated, no term): Table 5's ablations without
    one alignment type. A domain may be None when every discriminator that reads it is
    off (training without ``s``, say); otherwise that is a ``ValueError``. Holds no state
    besides the discriminators' weights.
    """

    class Params(Params):
        lambda_vvu: float = Field(0.2, ge=0)
        lambda_ts: float = Field(0.1, ge=0)
        lambda_vt: float = Field(0.5, ge=0)
        lambda_vus: float = Field(0.5, ge=0)
        lambda_vs: float = Field(0.3, ge=0)
        lambda_vut: float = Field(0.3, ge=0)
        disc_hidden: int = Field(512, ge=0)  # 0: linear discriminators
        eta: float = Field(10.0, gt=0)  # steepness of gamma(p)

    pairs: ClassVar[dict[str, tuple[str, str]]] = DOMAIN_PAIRS

    def __init__(self, params: A3VSEAdversary.Params, dim: int):
        super().__init__()
        self.params = params
        self.discriminators = nn.ModuleDict({name: DomainDiscriminator(dim, params.disc_hidden) for name in DOMAIN_PAIRS})

    def weight(self, name: str) -> float:
        """``lambda`` of discriminator ``name``."""
        return float(getattr(self.params, f"lambda_{name}"))

    def forward(self, img_emb: Tensor, img_u_emb: Tensor | None, txt_emb: Tensor, sem_emb: Tensor | None, *,
                progress: float) -> AdversarialTerms:
        coef = progress_coefficient(progress, self.params.eta)
        domains = {"v": img_emb, "vu": img_u_emb, "t": txt_emb, "s": sem_emb}
        reversed_ = {key: reverse_gradient(feats, coef) for key, feats in domains.items() if feats is not None}
        loss = img_emb.new_zeros(())
        log_likelihood: dict[str, Tensor] = {}
        for name, (a, b) in DOMAIN_PAIRS.items():
            if self.weight(name) == 0.0:
                continue
            missing = [key for key in (a, b) if key not in reversed_]
            if missing:
                raise ValueError(f"discriminator {name!r} (weight {self.weight(name)}) needs domain {missing[0]!r}, "
                                 "which was not given")
            disc = self.discriminators[name]
            log_likelihood[name] = domain_log_likelihood(disc(reversed_[a]), disc(reversed_[b]))
            loss = loss - self.weight(name) * log_likelihood[name]
        return AdversarialTerms(loss, log_likelihood, coef)
