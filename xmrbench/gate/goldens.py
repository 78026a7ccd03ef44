"""Kernel goldens, layer 1 of the regression gate.

Every loss (value and gradients), every similarity kernel (value and gradient), every
model's similarity matrix (and auxiliary loss), every retrieval metric and the claim
statistics are evaluated on fixed seeded inputs and compared, entry by entry, with the
values stored in ``results/reference/goldens.json``. A changed equation (a loss
replaced by zero, a model that scores noise, another tie rule) moves some entry far
beyond its tolerance; the rounding differences between CPUs, BLAS builds and thread
counts do not. See ``docs/gate_goldens.md``.

Machine-independent inputs: every number comes from numpy's PCG64 generator
(``np.random.default_rng``), whose bits are the same on every machine, and every
parameter of every model is set from it (torch's initialisers, whose vectorised
paths differ between CPUs, are never used); all computations run in float64. Each
group of entries has its own seed, so adding a group moves no other group's inputs.

Tolerances, elementwise ``|current - reference| <= atol + rtol * |reference|``:

- ``SMOOTH`` (losses, gradients, kernels, models, mAP, p-values): ``rtol = 1e-9`` and
  ``atol = 1e-9 * max|reference|``. Float64 has ``eps = 2.2e-16``; another summation
  order (BLAS kernel, vector width, thread split) changes a reduction of ``n`` terms
  by at most about ``n * eps`` relative to the sum of magnitudes, and the computations
  here are short (``n < 100``) and well conditioned (no entry sits near a kink of a
  hinge, a max, a top-k or BFAN's focal indicator: the inputs are continuous random
  draws). The absolute part scales with the entry because entries near zero
  (cancelling sums, gradients of nearly inactive terms) carry the rounding error of
  the entry's scale, not of their own value. Measured across 1 and 2 threads and
  torch's default, AVX2 and AVX-512 kernels and MKL's code paths: differences of
  about ``1e-14`` absolute at most, at most ``5e-6`` of the tolerance (see the docs).
- ``COUNTED`` (recalls, medr, meanr, rsum, precision@k, permutation p-values): values
  computed from integer counts; ``rtol = 0``, ``atol = 1e-9``. One query more or less
  moves them by ``1 / n_queries`` or more, so this is exact in effect, while a last-bit
  difference in how a mean is divided passes.
- ``EXACT`` (ranks, hit indicators, relevance, verdict codes): integer-valued results
  of comparisons between exactly representable scores (ties on a grid of multiples of
  1/8 are exact in floating point), identical on every machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from xmrbench.errors import StoreError, XmrbenchError

GOLDENS_FILE = "goldens.json"
GOLDENS_KIND = "xmrbench.goldens"
GOLDENS_VERSION = 1


# ---------------------------------------------------------------------------------
# entries and tolerances


@dataclass(frozen=True)
class Golden:
    """One stored result: ``values`` (float64, flat) with its tolerances."""

    name: str
    values: np.ndarray
    rtol: float
    atol: float
    description: str = ""


@dataclass(frozen=True)
class _Rule:
    """How an entry's tolerances are set: ``atol = atol + atol_scale * max|values|``."""

    rtol: float
    atol: float
    atol_scale: float


SMOOTH = _Rule(rtol=1e-9, atol=0.0, atol_scale=1e-9)
COUNTED = _Rule(rtol=0.0, atol=1e-9, atol_scale=0.0)
EXACT = _Rule(rtol=0.0, atol=0.0, atol_scale=0.0)


def _flat(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    return np.array(values, dtype=np.float64).ravel()


class _Entries:
    """Collects goldens (a name computed twice is a bug)."""

    def __init__(self) -> None:
        self.goldens: dict[str, Golden] = {}

    def add(self, name: str, values: Any, rule: _Rule, description: str) -> None:
        arr = _flat(values)
        if name in self.goldens:
            raise ValueError(f"golden {name!r} is computed twice")
        finite = arr[np.isfinite(arr)]  # broken code may give NaN: compare_goldens reports it
        scale = float(np.abs(finite).max(initial=0.0))
        self.goldens[name] = Golden(name, arr, rule.rtol, rule.atol + rule.atol_scale * scale, description)


class _Draw:
    """Seeded inputs from numpy's PCG64 (the same bits on every machine), as float64 tensors.

    ``jitter`` multiplies every continuous draw by ``1 + jitter * z`` (``z`` standard
    normal, from a stream of its own): a check that no entry sits on a discontinuity.
    Integer and tie-grid draws are never jittered.
    """

    def __init__(self, seed: int, jitter: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self._noise = np.random.default_rng([seed, 1])
        self.jitter = jitter

    def _jittered(self, x: np.ndarray) -> torch.Tensor:
        if self.jitter:
            x = x * (1.0 + self.jitter * self._noise.standard_normal(x.shape))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))

    def normal(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return self._jittered(self.rng.standard_normal(shape) * scale)

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return self._jittered(self.rng.uniform(low, high, size=shape))

    def unit(self, *shape: int) -> torch.Tensor:
        """Normal draws scaled to unit L2 norm along the last axis."""
        x = self.rng.standard_normal(shape)
        x = x / np.sqrt((x * x).sum(-1, keepdims=True))
        return self._jittered(x)

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(low, high, size=shape).astype(np.int64))

    def grid(self, steps: int, *shape: int) -> torch.Tensor:
        """Multiples of ``1 / steps`` in ``[0, 1]``: exact in floating point, so ties are exact."""
        return torch.from_numpy(self.rng.integers(0, steps + 1, size=shape).astype(np.float64) / steps)


def _grad_of(value: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of a 0-d ``value`` w.r.t. ``inputs`` (zeros where an input is not used)."""
    if not value.requires_grad:  # a result cut off from its inputs has no gradient
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(value, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------------------------
# losses

#: (setting, non-default Params, batch) per loss; "" is the default setting. A loss
#: missing here gets its default Params on the plain batch.
_LOSS_SETTINGS: dict[str, tuple[tuple[str, dict[str, Any], str], ...]] = {
    "triplet_sum": (
        ("", {}, "plain"),
        ("margin0.5-mean-labels", {"margin": 0.5, "reduction": "mean"}, "labelled"),
    ),
    "hardest_negative": (
        ("", {}, "plain"),
        ("margin0.1-mean-labels", {"margin": 0.1, "reduction": "mean"}, "labelled"),
    ),
    "bidirectional_ranking": (
        ("", {}, "plain"),
        ("labels", {}, "labelled"),
        ("top2-neighbours-mean", {"margin": 0.3, "lambda3": 1.0, "lambda4": 0.5, "top_k": 2, "reduction": "mean"},
         "labelled"),
    ),
    # every image of the "one-negative" batch has exactly one negative caption, so the
    # sampled negatives do not depend on torch's random stream (whose bits may differ
    # between CPUs)
    "logistic": (
        ("", {}, "one-negative"),
        ("neg3-mean", {"neg_per_pos": 3, "reduction": "mean"}, "one-negative"),
    ),
    # Deep CCA's total correlation needs more aligned pairs than output dimensions
    "dcca": (("", {}, "many-pairs"), ("k2-ridge", {"r1": 0.1, "r2": 0.05, "k": 2}, "many-pairs")),
}
#: Which inputs a loss reads: the embeddings (sims = img_emb @ txt_emb.T inside the
#: loss) and/or a given similarity matrix. Unknown losses: both.
_LOSS_ROUTES: dict[str, tuple[str, ...]] = {
    "triplet_sum": ("emb", "sims"),
    "hardest_negative": ("emb", "sims"),
    "bidirectional_ranking": ("emb",),
    "logistic": ("sims",),
    "dcca": ("emb",),
}


def _loss_batch(kind: str, draw: _Draw) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Unit embeddings ``(B_img, 5)``, ``(B_txt, 5)`` and labels of one batch kind."""
    if kind == "plain":  # image i matches caption i
        return draw.unit(4, 5), draw.unit(4, 5), None
    if kind == "labelled":  # images 1, 2 share a label (image neighbours); captions share images
        labels = (torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2, 2, 1, 0]))
        return draw.unit(4, 5), draw.unit(7, 5), labels
    if kind == "many-pairs":  # 12 aligned pairs (image i, caption i) of raw 3-d outputs
        return draw.normal(12, 3), draw.normal(12, 3), None
    if kind == "one-negative":  # every image matches captions 0-4; caption 5 is the only negative
        labels = (torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0, 0, 1]))
        return draw.unit(4, 5), draw.unit(6, 5), labels
    raise ValueError(f"unknown loss batch {kind!r}")


def _loss_goldens(out: _Entries, jitter: float) -> None:
    from xmrbench.core.losses import registry as loss_registry

    for name, loss_cls in loss_registry.LOSSES.items():
        for setting, params, batch in _LOSS_SETTINGS.get(name, (("", {}, "plain"),)):
            draw = _Draw(1000 + sum(map(ord, f"{name}/{setting}")), jitter)
            prefix = f"loss/{name}/{setting}".rstrip("/")
            what = f"{name} loss ({setting or 'default Params'}, {batch} batch)"
            loss = loss_cls(loss_cls.Params(**params))
            img, txt, labels = _loss_batch(batch, draw)
            sims = draw.uniform(-1.0, 1.0, img.shape[0], txt.shape[0])
            routes = _LOSS_ROUTES.get(name, ("emb", "sims"))
            if "emb" in routes:
                img_l, txt_l = _leaf(img), _leaf(txt)
                value = loss(img_l, txt_l, labels=labels)
                grad_img, grad_txt = _grad_of(value, img_l, txt_l)
                out.add(f"{prefix}/value", value, SMOOTH, f"{what}: value")
                out.add(f"{prefix}/grad_img", grad_img, SMOOTH, f"{what}: d/d img_emb")
                out.add(f"{prefix}/grad_txt", grad_txt, SMOOTH, f"{what}: d/d txt_emb")
            if "sims" in routes:
                sims_l = _leaf(sims)
                value = loss(img, txt, sims=sims_l, labels=labels)
                (grad_sims,) = _grad_of(value, sims_l)
                out.add(f"{prefix}/sims_value", value, SMOOTH, f"{what} on a given sims matrix: value")
                out.add(f"{prefix}/grad_sims", grad_sims, SMOOTH, f"{what} on a given sims matrix: d/d sims")
    _instance_loss_goldens(out, jitter)
    _acmr_loss_goldens(out, jitter)


def _instance_loss_goldens(out: _Entries, jitter: float) -> None:
    """DPC's instance loss (not a registered retrieval loss: it needs global classes)."""
    from xmrbench.core.losses import instance

    draw = _Draw(1100, jitter)
    img_logits, txt_logits = draw.normal(4, 6), draw.normal(7, 6)
    img_classes, txt_classes = torch.tensor([0, 3, 5, 1]), torch.tensor([0, 0, 3, 5, 5, 1, 2])
    for reduction in ("mean", "sum"):
        prefix = "loss/instance" if reduction == "mean" else f"loss/instance/{reduction}"
        what = f"DPC instance loss (reduction {reduction})"
        a, b = _leaf(img_logits), _leaf(txt_logits)
        value = instance.instance_loss(a, b, img_classes, txt_classes, reduction=reduction)
        grad_a, grad_b = _grad_of(value, a, b)
        out.add(f"{prefix}/value", value, SMOOTH, f"{what}: value")
        out.add(f"{prefix}/grad_img_logits", grad_a, SMOOTH, f"{what}: d/d img_logits")
        out.add(f"{prefix}/grad_txt_logits", grad_b, SMOOTH, f"{what}: d/d txt_logits")


#: The ACMR loss batch: 4 images, 6 texts, the text's image as in the model batches.
#: Single labels (classes of the images) and multi-hot labels (4 classes); a text
#: carries its image's labels. Every anchor has positives and negatives.
_ACMR_IMAGE_CLASSES = (0, 1, 1, 2)
_ACMR_IMAGE_MULTI_HOT = ((1, 0, 1, 0), (0, 1, 0, 0), (1, 1, 0, 0), (0, 0, 1, 1))


def _acmr_loss_goldens(out: _Entries, jitter: float) -> None:
    """ACMR's loss terms (not registered retrieval losses: they read labels, logits and
    weights): ``L_imi`` (sum and mean), ``L_imd`` (single and multi-hot labels), ``L_reg``
    and ``L_adv``, with gradients w.r.t. both of their inputs."""
    from xmrbench.core.losses import acmr

    draw = _Draw(1200, jitter)
    caption_image = torch.tensor(_CAPTION_IMAGE)
    single = torch.tensor(_ACMR_IMAGE_CLASSES)
    multi = torch.tensor(_ACMR_IMAGE_MULTI_HOT)
    labels = {
        "single": (acmr.label_matrix(single, 3), acmr.label_matrix(single[caption_image], 3)),
        "multi": (acmr.label_matrix(multi, 4), acmr.label_matrix(multi[caption_image], 4)),
    }
    # projections in (-1, 1), as the projectors' tanh gives them
    img_emb, txt_emb = draw.uniform(-1.0, 1.0, 4, 5), draw.uniform(-1.0, 1.0, 6, 5)
    for setting, kind, kw in (
        ("", "single", dict(lam=0.05, margin=1.65, reduction="sum")),
        ("multi-label-mean", "multi", dict(lam=0.5, margin=1.75, reduction="mean")),
    ):
        prefix = f"loss/acmr/imi/{setting}".rstrip("/")
        what = f"ACMR L_imi ({kind} labels, lambda {kw['lam']}, margin {kw['margin']}, {kw['reduction']})"
        a, b = _leaf(img_emb), _leaf(txt_emb)
        value = acmr.imi_loss(a, b, *labels[kind], **kw)
        grad_a, grad_b = _grad_of(value, a, b)
        out.add(f"{prefix}/value", value, SMOOTH, f"{what}: value")
        out.add(f"{prefix}/grad_img", grad_a, SMOOTH, f"{what}: d/d img_emb")
        out.add(f"{prefix}/grad_txt", grad_b, SMOOTH, f"{what}: d/d txt_emb")
    for kind, n_classes in (("single", 3), ("multi", 4)):
        prefix = "loss/acmr/imd" if kind == "single" else "loss/acmr/imd/multi-label"
        what = f"ACMR L_imd ({kind} labels)"
        a, b = _leaf(draw.normal(4, n_classes)), _leaf(draw.normal(6, n_classes))
        value = acmr.imd_loss(a, b, *labels[kind])
        grad_a, grad_b = _grad_of(value, a, b)
        out.add(f"{prefix}/value", value, SMOOTH, f"{what}: value")
        out.add(f"{prefix}/grad_img_logits", grad_a, SMOOTH, f"{what}: d/d img_logits (label classifier)")
        out.add(f"{prefix}/grad_txt_logits", grad_b, SMOOTH, f"{what}: d/d txt_logits (label classifier)")
    a, b = _leaf(draw.normal(4, 2)), _leaf(draw.normal(6, 2))
    value = acmr.adversarial_loss(a, b)
    grad_a, grad_b = _grad_of(value, a, b)
    out.add("loss/acmr/adv/value", value, SMOOTH, "ACMR L_adv: value")
    out.add("loss/acmr/adv/grad_img_logits", grad_a, SMOOTH, "ACMR L_adv: d/d img_logits (modality classifier)")
    out.add("loss/acmr/adv/grad_txt_logits", grad_b, SMOOTH, "ACMR L_adv: d/d txt_logits (modality classifier)")
    weights = [_leaf(draw.normal(*shape)) for shape in ((6, 7), (4, 6), (5, 9), (4, 5))]
    value = acmr.reg_loss(weights)
    grads = _grad_of(value, *weights)
    out.add("loss/acmr/reg/value", value, SMOOTH, "ACMR L_reg of four weight matrices: value")
    out.add("loss/acmr/reg/grad_weights", torch.cat([g.ravel() for g in grads]), SMOOTH,
            "ACMR L_reg: d/d each weight matrix (6x7, 4x6, 5x9, 4x5), concatenated")


# ---------------------------------------------------------------------------------
# similarity kernels

#: Caption lengths of the cross-attention inputs: no one-word caption (its attention
#: ties are exact by construction and would make BFAN's focal step a rounding question).
_LENGTHS = (2, 7, 3, 5, 4)
#: A working-set budget small enough that the blocked kernels cut these inputs into
#: several blocks of images and captions.
_BLOCK_BUDGET = 8192


def _sim_goldens(out: _Entries, jitter: float) -> None:
    from xmrbench.core.sim import cosine, cross_attention, focal_attention

    draw = _Draw(2000, jitter)
    img, txt, weights = draw.normal(5, 6), draw.normal(7, 6), draw.normal(5, 7)
    with torch.no_grad():
        out.add("sim/cosine", cosine.cosine_sims(img, txt), SMOOTH, "cosine similarity kernel: sims (5, 7)")
    img_l, txt_l = _leaf(img), _leaf(txt)
    grads = _grad_of((weights * cosine.cosine_sims(img_l, txt_l)).sum(), img_l, txt_l)
    out.add("sim/cosine/grad_img", grads[0], SMOOTH, "cosine kernel: d(sum W*sims)/d img")
    out.add("sim/cosine/grad_txt", grads[1], SMOOTH, "cosine kernel: d(sum W*sims)/d txt")

    draw = _Draw(2100, jitter)
    regions, words = draw.unit(3, 4, 6), draw.unit(5, 7, 6)  # steps after a caption's length are padding
    lengths = torch.tensor(_LENGTHS)
    weights = draw.normal(3, 5)
    kernels: list[tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor], dict[str, Any]]] = []
    for direction, (lambda_softmax, lambda_lse) in (("t2i", (9.0, 6.0)), ("i2t", (4.0, 5.0))):
        for pooling in ("avg", "lse"):
            kw = dict(direction=direction, pooling=pooling, lambda_softmax=lambda_softmax, lambda_lse=lambda_lse)
            kernels.append((f"scan/{direction}-{pooling}", cross_attention.scan_sims,
                            cross_attention.scan_pair_scores, kw))
    for focal in ("equal", "prob"):
        kernels.append((f"bfan/{focal}", focal_attention.bfan_sims, focal_attention.bfan_pair_scores,
                        dict(focal=focal, lambda_softmax=20.0)))
    for name, sims_fn, pairs_fn, kw in kernels:
        what = f"{name} attention kernel"
        with torch.no_grad():
            sims = sims_fn(regions, words, lengths, budget_bytes=_BLOCK_BUDGET, **kw)
            pairs = pairs_fn(regions, words[:3], lengths[:3], **kw)
        out.add(f"sim/{name}", sims, SMOOTH, f"{what}: sims (3, 5), blocked, evaluation path")
        out.add(f"sim/{name}/pairs", pairs, SMOOTH, f"{what}: aligned pair scores (3,)")
        regions_l, words_l = _leaf(regions), _leaf(words)
        value = (weights * sims_fn(regions_l, words_l, lengths, **kw)).sum()
        grad_regions, grad_words = _grad_of(value, regions_l, words_l)
        out.add(f"sim/{name}/grad_regions", grad_regions, SMOOTH, f"{what}: d(sum W*sims)/d regions")
        out.add(f"sim/{name}/grad_words", grad_words, SMOOTH, f"{what}: d(sum W*sims)/d words")


# ---------------------------------------------------------------------------------
# models

N_IMAGES, N_CAPTIONS = 4, 6
#: Image of each caption in the model batches (for auxiliary losses).
_CAPTION_IMAGE = (0, 0, 1, 2, 3, 3)


def _set_parameters(model: torch.nn.Module, draw: _Draw) -> None:
    """Set every floating parameter and buffer of ``model`` from ``draw``.

    Weights ``N(0, 1 / fan_in)`` (``fan_in`` = the product of all but the first
    dimension), other vectors ``N(0, 0.1^2)``; batch norms get scale ``1 + N(0, 0.2^2)``,
    shift and running mean ``N(0, 0.1^2)`` and running variance ``U(0.5, 1.5)``; a 0-d
    tensor (a temperature) keeps its configured value.
    """
    with torch.no_grad():
        for module in model.modules():
            norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in tensors:
                if not tensor.is_floating_point() or tensor.dim() == 0:
                    continue  # counters, and scalars such as a temperature, keep their configured value
                shape = tuple(tensor.shape)
                if norm and name == "weight":
                    value = 1.0 + draw.normal(*shape, scale=0.2)
                elif norm and name == "running_var":
                    value = draw.uniform(0.5, 1.5, *shape)
                elif tensor.dim() >= 2:
                    value = draw.normal(*shape, scale=1.0 / math.sqrt(math.prod(shape[1:])))
                else:
                    value = draw.normal(*shape, scale=0.1)
                tensor.copy_(value)


def _tokens(draw: _Draw, vocab: int, lengths: Iterable[int]):
    """Token ids ``(B, L)`` in ``[1, vocab)``, zero after each length, as a TextBatch."""
    from xmrbench.core.models.base import TextBatch

    lengths = torch.tensor(list(lengths))
    tokens = draw.integers(1, vocab, len(lengths), int(lengths.max()))
    tokens[torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = 0
    return TextBatch(tokens=tokens, lengths=lengths)


class _PairSplit:
    """What ``fit`` and ``prepare_training`` read of a prepared training split: images,
    caption vectors, caption -> image, and the split's per-image ``extras`` (labels)."""

    name = "train"

    def __init__(self, images: torch.Tensor, texts: torch.Tensor, caption_image: np.ndarray,
                 extras: dict[str, Any] | None = None):
        self.images, self.texts, self._caption_image = images, texts, caption_image
        self.split = SimpleNamespace(extras=dict(extras or {}))

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    def caption_image(self) -> np.ndarray:
        return self._caption_image

    def image_batch(self, index: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(index))]

    def text_batch(self, index: np.ndarray):
        from xmrbench.core.models.base import TextBatch

        return TextBatch(vectors=self.texts[torch.as_tensor(np.asarray(index))])


@dataclass
class _ModelCase:
    """A model ready for the goldens and its fixed inputs (images, captions)."""

    model: Any
    images: torch.Tensor
    text: Any


def _build(name: str, params: dict[str, Any], dims: Any, draw: _Draw, *, split: Any = None) -> Any:
    """Model ``name`` in float64 with every parameter from ``draw``, sized by ``split``
    (``prepare_training``), fitted on it if the model is closed-form, in eval mode."""
    from xmrbench.core.models import registry as model_registry

    cls = model_registry.MODELS[name]
    model = cls(cls.Params(**params), dims)
    model.prepare_training(split)
    model = model.double()
    _set_parameters(model, draw)
    if cls.closed_form:
        model.fit(split)
    return model.eval()


def _region_case(name: str, params: dict[str, Any], draw: _Draw) -> _ModelCase:
    from xmrbench.core.models.base import InputDims

    dims = InputDims(image_dim=7, vocab_size=13, n_regions=4)
    model = _build(name, params, dims, draw)
    return _ModelCase(model, draw.normal(N_IMAGES, 4, 7), _tokens(draw, 13, (3, 5, 2, 6, 4, 3)))


def _latent_pairs(draw: _Draw, shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """60 images (6-d) with two captions each (5-d) sharing three latent factors of strength
    3, 2 and 1 (distinct, well separated canonical correlations); ``shift`` (60,) moves the
    weakest factor of each image (CCA-3V's classes)."""
    n = 60
    caption_image = np.repeat(np.arange(n), 2)
    latent = draw.normal(n, 3) * torch.tensor([3.0, 2.0, 1.0])
    if shift is not None:
        latent[:, 2] += shift
    images = latent @ draw.normal(3, 6) + 0.5 * draw.normal(n, 6)
    texts = latent[caption_image] @ draw.normal(3, 5) + 0.5 * draw.normal(2 * n, 5)
    return images, texts, caption_image


def _model_cases(name: str, draw: _Draw) -> dict[str, _ModelCase]:
    """Variant -> case for model ``name`` ("" is the main variant), on tiny dimensions."""
    from xmrbench.core.models.base import InputDims, TextBatch

    tokens6 = dict(embed_dim=6, word_dim=5)
    if name == "vsepp":
        model = _build(name, tokens6, InputDims(image_dim=7, vocab_size=13), draw)
        return {"": _ModelCase(model, draw.normal(N_IMAGES, 7), _tokens(draw, 13, (3, 5, 2, 6, 4, 3)))}
    if name == "order_embeddings":
        cases = {}
        for variant, penalty in (("", "norm"), ("squared", "squared")):
            params = dict(tokens6, order_penalty=penalty, block_elements=20)  # tiles of 1 image x 3 captions
            model = _build(name, params, InputDims(image_dim=7, vocab_size=13), draw)
            cases[variant] = _ModelCase(model, draw.normal(N_IMAGES, 7), _tokens(draw, 13, (3, 5, 2, 6, 4, 3)))
        return cases
    if name in ("two_branch_embedding", "two_branch_similarity"):
        params: dict[str, Any] = dict(hidden_dim=8, embed_dim=6)
        if name == "two_branch_similarity":
            params.update(fc_dims=(5, 4), block_elements=40)  # several row blocks
        model = _build(name, params, InputDims(image_dim=7, vocab_size=13, text_dim=9), draw)
        return {"": _ModelCase(model, draw.normal(N_IMAGES, 7), TextBatch(vectors=draw.normal(N_CAPTIONS, 9)))}
    if name == "scan":
        return {
            "": _region_case(name, tokens6, draw),
            "i2t-avg": _region_case(name, dict(tokens6, direction="i2t", pooling="avg"), draw),
        }
    if name == "bfan":
        return {
            "": _region_case(name, tokens6, draw),
            "prob": _region_case(name, dict(tokens6, focal="prob"), draw),
        }
    if name == "vsrn":
        params = dict(tokens6, gcn_layers=2, decoder_hidden=5, decoder_word_dim=4)
        return {"": _region_case(name, params, draw)}
    if name == "dan":
        return {"": _region_case(name, dict(embed_dim=5, word_dim=4, steps=2), draw)}
    if name == "adapt":
        params = dict(tokens6, glove_dim=3)
        return {
            "": _region_case(name, params, draw),
            "i2t": _region_case(name, dict(params, direction="i2t"), draw),
            "no-fovea": _region_case(name, dict(params, fovea=False), draw),
        }
    if name == "a3vse":
        params = dict(tokens6, heads=3, context_dim=4)
        return {
            "": _region_case(name, params, draw),
            "project": _region_case(name, dict(params, head_combine="project"), draw),
            "mean-pooling": _region_case(name, dict(params, pooling="mean"), draw),
        }
    if name == "dpc":
        params = dict(tokens6, text_channels=4, text_blocks=2)
        model = _build(name, params, InputDims(image_dim=7, vocab_size=13), draw, split=SimpleNamespace(n_images=5))
        return {"": _ModelCase(model, draw.normal(N_IMAGES, 7), _tokens(draw, 13, (3, 5, 2, 6, 4, 3)))}
    if name == "cca":
        # three shared latent factors of distinct strength: distinct, well separated
        # canonical correlations, so the fit is well conditioned
        split = _PairSplit(*_latent_pairs(draw))
        model = _build(name, dict(dim=3, reg=0.1, power=4.0), InputDims(image_dim=6, vocab_size=0, text_dim=5),
                       draw, split=split)
        test_latent = draw.normal(N_IMAGES, 3)
        test_images = test_latent @ draw.normal(3, 6) + 0.5 * draw.normal(N_IMAGES, 6)
        return {"": _ModelCase(model, test_images, TextBatch(vectors=draw.normal(N_CAPTIONS, 5)))}
    if name == "cca3v":
        # as for cca, plus three classes that shift the weakest latent factor: the label
        # view correlates with the other two, so it shapes the fitted space
        labels = np.arange(60) % 3
        split = _PairSplit(*_latent_pairs(draw, shift=2.0 * torch.from_numpy(labels - 1.0)), extras={"labels": labels})
        model = _build(name, dict(dim=3, reg=0.1), InputDims(image_dim=6, vocab_size=0, text_dim=5),
                       draw, split=split)
        test_latent = draw.normal(N_IMAGES, 3)
        test_images = test_latent @ draw.normal(3, 6) + 0.5 * draw.normal(N_IMAGES, 6)
        return {"": _ModelCase(model, test_images, TextBatch(vectors=draw.normal(N_CAPTIONS, 5)))}
    if name == "deep_cca":
        # the two networks, then the linear CCA fitted on their outputs over the pairs
        split = _PairSplit(*_latent_pairs(draw))
        model = _build(name, dict(hidden_dim=8, embed_dim=4, cca_dim=3, cca_reg=0.1),
                       InputDims(image_dim=6, vocab_size=0, text_dim=5), draw)
        model.after_epoch(split)
        return {"": _ModelCase(model, draw.normal(N_IMAGES, 6), TextBatch(vectors=draw.normal(N_CAPTIONS, 5)))}
    if name == "corr_ae":
        # features with their own offset and scale per dimension, so that the fitted
        # input scaling (per view or per feature) matters
        n = 10
        offsets_img, scales_img = draw.normal(7, scale=2.0), draw.uniform(0.5, 3.0, 7)
        offsets_txt, scales_txt = draw.normal(9, scale=2.0), draw.uniform(0.5, 3.0, 9)
        split = _PairSplit(draw.normal(n, 7) * scales_img + offsets_img,
                           draw.normal(2 * n, 9) * scales_txt + offsets_txt, np.repeat(np.arange(n), 2))
        cases = {}
        for variant, extra in (("", {}), ("euclidean", dict(similarity="euclidean")),
                               ("feature-scaling", dict(input_scaling="feature"))):
            params = dict(code_dim=5, hidden_dims=(6,), **extra)
            model = _build(name, params, InputDims(image_dim=7, vocab_size=0, text_dim=9), draw, split=split)
            model.prepare_training(split)  # the input scaling is fitted, not drawn: refit what the draw set
            images = draw.normal(N_IMAGES, 7) * scales_img + offsets_img
            texts = draw.normal(N_CAPTIONS, 9) * scales_txt + offsets_txt
            cases[variant] = _ModelCase(model, images, TextBatch(vectors=texts))
        return cases
    if name == "acmr":
        # the label classifier is sized by the training split's labels: 4 classes
        split = SimpleNamespace(name="train", split=SimpleNamespace(extras={"labels": np.array([0, 3, 1, 2, 3])}))
        params = dict(image_hidden=6, text_hidden=5, dim=4, adversary_hidden=3)
        model = _build(name, params, InputDims(image_dim=7, vocab_size=0, text_dim=9), draw, split=split)
        return {"": _ModelCase(model, draw.normal(N_IMAGES, 7), TextBatch(vectors=draw.normal(N_CAPTIONS, 9)))}
    if name == "sg_baseline":
        tags = 8
        scores = draw.uniform(0.0, 1.0, N_IMAGES, tags) * (draw.integers(0, 3, N_IMAGES, tags) > 0)
        queries = (draw.integers(0, 3, N_CAPTIONS, tags) == 0).to(torch.float64)
        model = _build(name, {}, InputDims(image_dim=tags, vocab_size=0, text_dim=tags), draw,
                       split=SimpleNamespace(n_images=N_IMAGES))
        return {"": _ModelCase(model, scores, TextBatch(vectors=queries))}
    raise ValueError(f"model {name!r} has no golden inputs: add a case to xmrbench/gate/goldens.py _model_cases")


def _aligned(emb: Any, n: int) -> Any:
    return emb[:n] if isinstance(emb, torch.Tensor) else emb[torch.arange(n)]


def _model_goldens(out: _Entries, jitter: float) -> None:
    from xmrbench.core.models import registry as model_registry

    for name in model_registry.MODELS:
        draw = _Draw(3000 + sum(map(ord, name)), jitter)
        for variant, case in _model_cases(name, draw).items():
            prefix = f"model/{name}/{variant}".rstrip("/")
            what = f"{name} model{f' ({variant})' if variant else ''}"
            model = case.model
            with torch.no_grad():
                img_emb = model.encode_images(case.images)
                txt_emb = model.encode_texts(case.text)
                sims = model.similarity(img_emb, txt_emb)
                n = min(N_IMAGES, N_CAPTIONS)
                pairs = model.pair_scores(_aligned(img_emb, n), _aligned(txt_emb, n))
            out.add(f"{prefix}/sims", sims, SMOOTH, f"{what}: similarity matrix (4, 6) of fixed inputs, eval mode")
            out.add(f"{prefix}/pair_scores", pairs, SMOOTH, f"{what}: scores of 4 aligned pairs")
            if name == "cca":
                out.add(f"{prefix}/correlations", model.correlations, SMOOTH, f"{what}: canonical correlations")
            if name == "cca3v":
                out.add(f"{prefix}/eigenvalues", model.eigenvalues, SMOOTH,
                        f"{what}: top generalised eigenvalues of the three-view problem")
            if name == "acmr":
                with torch.no_grad():
                    label_logits = torch.cat([model.label_logits(img_emb), model.label_logits(txt_emb)])
                    modality_logits = torch.cat([model.modality_logits(img_emb), model.modality_logits(txt_emb)])
                out.add(f"{prefix}/label_logits", label_logits, SMOOTH,
                        f"{what}: label classifier logits (4 classes) of the 4 image, then the 6 text embeddings")
                out.add(f"{prefix}/modality_logits", modality_logits, SMOOTH,
                        f"{what}: modality classifier logits of the 4 image, then the 6 text embeddings")
            if variant == "":
                _auxiliary_goldens(out, name, model, case, what)


def _auxiliary_goldens(out: _Entries, name: str, model: Any, case: _ModelCase, what: str) -> None:
    """A model's auxiliary training loss in eval mode (no dropout draw, running statistics),
    for the models that have one."""
    from xmrbench.core.models.base import TrainBatch

    if type(model).closed_form:
        return
    labels = (torch.arange(N_IMAGES), torch.tensor(_CAPTION_IMAGE))
    images = _leaf(case.images)
    img_emb = model.encode_images(images)
    txt_emb = model.encode_texts(case.text)
    if name == "corr_ae":  # its training objective is the model's own
        terms = model.objective(images, case.text, labels[1])
        grads = [_grad_of(getattr(model.objective(images, case.text, labels[1]), part), images)[0].ravel()
                 for part in ("recon_img", "corr", "total")]  # L_T does not depend on the images
        out.add(f"model/{name}/objective", torch.stack([terms.recon_img, terms.recon_txt, terms.corr, terms.total]),
                SMOOTH, f"{what}: objective terms [L_I, L_T, L_C, L] (eval mode)")
        out.add(f"model/{name}/objective/grad_images", torch.cat(grads), SMOOTH,
                f"{what}: d L_I, d L_C and d L / d image features, concatenated")
        return
    batch = TrainBatch(images=images, text=case.text, labels=labels, image_ids=torch.tensor([0, 3, 1, 4]),
                       caption_ids=torch.arange(len(_CAPTION_IMAGE)))
    value = model.auxiliary_loss(batch, img_emb, txt_emb)
    if value is None:
        return
    (grad_images,) = _grad_of(value, images)
    out.add(f"model/{name}/auxiliary_loss", value, SMOOTH, f"{what}: auxiliary loss (eval mode)")
    out.add(f"model/{name}/auxiliary_loss/grad_images", grad_images, SMOOTH,
            f"{what}: d auxiliary loss / d image features")


# ---------------------------------------------------------------------------------
# metrics


def _metric_goldens(out: _Entries) -> None:
    from xmrbench.core.metrics import labels as label_metrics
    from xmrbench.core.metrics import retrieval, sentence
    from xmrbench.core.metrics.keys import RETRIEVAL_KEYS

    draw = _Draw(4000)
    cpi = 5
    # scores on a grid of multiples of 1/8 (exact ties), the positives a little ahead
    sims = draw.grid(8, 6, 6 * cpi)
    sims += torch.block_diag(*[torch.ones(1, cpi)] * 6) * draw.integers(0, 3, 6, 1) / 8
    i2t = retrieval.i2t_ranks(sims, captions_per_image=cpi)
    t2i = retrieval.t2i_ranks(sims, captions_per_image=cpi)
    out.add("metric/retrieval/i2t_ranks", i2t, EXACT, "i2t ranks of a tied (6, 30) sims matrix (pessimistic ties)")
    out.add("metric/retrieval/t2i_ranks", t2i, EXACT, "t2i ranks of a tied (6, 30) sims matrix (pessimistic ties)")
    hits = [retrieval.recall_at_k(r, k) for r in (i2t, t2i) for k in (1, 5, 10)]
    out.add("metric/retrieval/recall_at_k", torch.cat(hits), EXACT, "hit@k indicators, k = 1, 5, 10, both directions")
    summary = retrieval.retrieval_metrics(sims, captions_per_image=cpi)
    out.add("metric/retrieval/summary", [summary[k] for k in RETRIEVAL_KEYS], COUNTED,
            "retrieval_metrics of the tied matrix: " + ", ".join(RETRIEVAL_KEYS))
    medr = [retrieval.summarize(torch.tensor(a), torch.tensor(b)) for a, b in (([0, 10], [3, 0, 7]), ([5], [1, 2]))]
    out.add("metric/retrieval/summarize", [m[k] for m in medr for k in RETRIEVAL_KEYS], COUNTED,
            "summarize of hand-written ranks: medr of even and odd counts, meanr, recalls")
    # ties: a constant matrix (worst ranks), and positives tied with some negatives
    constant = torch.full((3, 3 * cpi), 0.5)
    tied = draw.grid(4, 4, 4 * cpi)
    tied[torch.arange(4), torch.arange(4) * cpi] = tied.max(dim=1).values
    ties = [retrieval.i2t_ranks(m, captions_per_image=cpi) for m in (constant, tied)]
    ties += [retrieval.t2i_ranks(m, captions_per_image=cpi) for m in (constant, tied)]
    out.add("metric/retrieval/ties", torch.cat(ties), EXACT,
            "ranks of a constant matrix and of positives tied with negatives (ties count against the positive)")
    folded = draw.grid(8, 10, 10 * cpi)
    folded += torch.block_diag(*[torch.ones(1, cpi)] * 10) * draw.integers(0, 3, 10, 1) / 8
    folds = retrieval.fold_metrics(folded, n_folds=5, captions_per_image=cpi)
    out.add("metric/retrieval/folds", [folds[k] for k in RETRIEVAL_KEYS], COUNTED,
            "fold_metrics, 5 folds of a tied (10, 50) matrix: mean of folds, rsum recomputed")

    txt_sims = draw.grid(8, 6 * cpi, 6 * cpi)
    s2s = sentence.s2s_ranks(txt_sims, captions_per_image=cpi)
    out.add("metric/sentence/ranks", s2s, EXACT, "sentence-to-sentence ranks of a tied (30, 30) matrix")
    s2s_summary = sentence.sentence_metrics(txt_sims, captions_per_image=cpi)
    out.add("metric/sentence/summary", list(s2s_summary.values()), COUNTED, "sentence_metrics: s2s R@1, R@5, R@10")

    query, gallery = draw.integers(0, 4, 8), draw.integers(0, 4, 12)
    multi_q, multi_g = draw.integers(0, 2, 8, 5), draw.integers(0, 2, 12, 5)
    rel = label_metrics.relevance_from_labels(query, gallery)
    rel_multi = label_metrics.relevance_from_labels(multi_q, multi_g)
    out.add("metric/labels/relevance", torch.cat([rel.ravel(), rel_multi.ravel()]), EXACT,
            "relevance from single labels (8 x 12) and multi-hot labels (8 x 12)")
    scores = draw.grid(4, 8, 12)  # five levels: many ties
    ap = [label_metrics.average_precision(scores, r) for r in (rel, rel_multi)]
    ap += [label_metrics.average_precision(scores, r, at=5, normalize="hits") for r in (rel, rel_multi)]
    out.add("metric/labels/average_precision", torch.cat(ap), SMOOTH,
            "AP per query on tied scores: whole list, then at=5 normalised by hits; single and multi-hot labels")
    maps = [label_metrics.mean_average_precision(scores, r) for r in (rel, rel_multi)]
    out.add("metric/labels/map", maps, SMOOTH, "mAP on tied scores, single and multi-hot labels")
    prec = [label_metrics.precision_at_k(scores, r, (1, 3, 5, 20)) for r in (rel, rel_multi)]
    out.add("metric/labels/precision_at_k", torch.cat(prec), COUNTED, "precision@k, k = 1, 3, 5, 20 (past the gallery)")


# ---------------------------------------------------------------------------------
# claim statistics

#: Verdicts as numbers (unknown verdicts: -9).
VERDICT_CODES = {"holds": 1.0, "not significant": 0.0, "contradicted": -1.0, "untested": 2.0}


def _effect(result: Any) -> list[float]:
    """``[n, mean_diff]`` of a TestResult; ``[-1, -1]`` for None."""
    return [-1.0, -1.0] if result is None else [float(result.n), float(result.mean_diff)]


def _p_values(result: Any) -> list[float]:
    """``[p_greater, p_less]`` of a TestResult; -1 for what is None."""
    if result is None:
        return [-1.0, -1.0]
    return [-1.0 if p is None else float(p) for p in (result.p_greater, result.p_less)]


def _add_tests(out: _Entries, name: str, results: list[Any], rule: _Rule, what: str) -> None:
    """Two entries per list of TestResults (effects and p-values differ in scale)."""
    out.add(f"{name}/effect", [v for r in results for v in _effect(r)], SMOOTH, f"{what}: [n, mean_diff] (-1: none)")
    out.add(f"{name}/p", [v for r in results for v in _p_values(r)], rule, f"{what}: [p_greater, p_less] (-1: none)")


def _stats_goldens(out: _Entries) -> None:
    from xmrbench.stats import claims, paired

    cases = [
        ([80.1, 81.3, 79.8, 82.0, 80.7], [78.9, 80.2, 80.1, 80.5, 79.0]),  # ahead, noisy
        ([60.0, 61.5, 59.0], [60.5, 62.0, 60.5]),  # behind
        ([3.0], [1.0]),  # one pair: no test
    ]
    _add_tests(out, "stats/seed_ttest", [paired.seed_ttest(a, b) for a, b in cases], SMOOTH,
               "seed_ttest of three paired cases (noisy ahead, behind, one pair)")
    if hasattr(paired, "seed_test"):  # the rule that picks a t-test, an exact sign test or none
        cases += [
            ([1.5, 2.5, 3.5], [0.5, 1.5, 2.5]),  # zero variance of the differences
            ([71.25, 71.25, 71.25], [70.0, 70.0, 70.0]),  # deterministic: both sides equal across seeds
        ]
        _add_tests(out, "stats/seed_test", [paired.seed_test(a, b) for a, b in cases], SMOOTH,
                   "seed_test of five cases (noisy ahead, behind, one pair, zero-variance difference, deterministic)")

    rng = np.random.default_rng(5000)
    diffs = [rng.integers(-2, 3, 12).astype(float), rng.integers(-1, 3, 30).astype(float)]
    flips = [paired.signflip_test(diffs, weights=[100 / 12, 100 / 30], n_resamples=500, seed=seed) for seed in (0, 7)]
    flips.append(paired.signflip_test([-diffs[1]], weights=[100 / 30], n_resamples=300, seed=3, chunk=64))
    _add_tests(out, "stats/signflip_test", flips, COUNTED, "signflip_test on integer differences, fixed seeds")
    out.add("stats/holm", paired.holm([0.01, 0.04, 0.03, 0.04, 0.2, 0.0005, 0.9]), SMOOTH,
            "Holm-adjusted p-values (with a tie)")

    ranks_rng = np.random.default_rng(5100)

    def ranks(shift: int) -> dict[int, dict[str, list[int]]]:
        return {s: {"i2t": np.maximum(ranks_rng.integers(0, 12, 6) - shift, 0).tolist(),
                    "t2i": np.maximum(ranks_rng.integers(0, 12, 30) - shift, 0).tolist()} for s in range(4)}

    side = claims.Side
    values = {
        "A": [410.0, 412.5, 409.0, 411.0], "B": [400.0, 401.5, 399.0, 402.5],
        "C": [390.0, 391.5, 389.0, 392.0], "E": [400.5, 401.0, 399.5, 402.0],
    }
    shifts = {"A": 3, "B": 0, "C": 0, "E": 0}
    sides = {(cell, "rsum", "test"): side(dict(enumerate(v)), ranks(shifts[cell])) for cell, v in values.items()}
    sides[("D", "rsum", "test")] = side({0: 405.0})
    sides[("F", "rsum", "test")] = side({0: 420.0, 1: 420.0, 2: 420.0})  # deterministic methods
    sides[("G", "rsum", "test")] = side({0: 415.0, 1: 415.0, 2: 415.0})
    sides[("A", "i2t_meanr", "test")] = side({0: 3.1, 1: 3.3, 2: 3.0, 3: 3.2})
    sides[("B", "i2t_meanr", "test")] = side({0: 4.0, 1: 4.4, 2: 3.9, 3: 4.1})
    claim_list = [
        ("holds", "A beats B", "rsum", "test", [("A", "B")]),
        ("contradicted", "C beats B", "rsum", "test", [("C", "B")]),
        ("contradicted-and-untested", "C and D beat B", "rsum", "test", [("C", "B"), ("D", "B")]),
        ("not-significant", "E beats B", "rsum", "test", [("E", "B")]),
        ("missing", "A beats Z", "rsum", "test", [("A", "Z")]),
        ("lower-is-better", "A ranks better than B", "i2t_meanr", "test", [("A", "B")]),
        ("other-protocol", "A beats E", "rsum", "test", [("A", "E")]),
        ("deterministic", "F beats G", "rsum", "test", [("F", "G")]),
    ]
    verdicts = claims.judge(claim_list, sides, comparable={("A", "E", "test"): False})
    codes: list[float] = []
    effects: list[float] = []
    p_values: list[float] = []
    for verdict in verdicts:
        codes.append(VERDICT_CODES.get(verdict.verdict, -9.0))
        for pair in verdict.pairs:
            codes += [VERDICT_CODES.get(pair.verdict, -9.0), float(len(pair.seeds))]
            effects += _effect(pair.seed_test) + _effect(pair.query_test)
            p_values += [-1.0 if pair.p_adjusted is None else pair.p_adjusted]
            p_values += _p_values(pair.seed_test) + _p_values(pair.query_test)
    out.add("stats/judge/verdicts", codes, EXACT,
            "judge: per claim its verdict code, per pair its verdict code and seed count "
            "(holds 1, not significant 0, contradicted -1, untested 2)")
    out.add("stats/judge/effect", effects, SMOOTH, "judge: per pair [n, mean_diff] of the seed and the query test")
    out.add("stats/judge/p", p_values, SMOOTH,
            "judge: per pair the Holm-adjusted p and [p_greater, p_less] of the seed and the query test (-1: none)")
    plans = [paired.seeds_for_power(e, sd, level=lv) for e, sd, lv in
             ((0.5, 1.0, 0.05), (20.6, 6.3, 0.05 / 16), (-3.0, 7.0, 0.01), (2.0, 0.0, 0.05 / 16), (1e-3, 1.0, 0.05))]
    plans += [pair.seeds_for_power for verdict in verdicts for pair in verdict.pairs if pair.plan_level is not None]
    out.add("stats/seeds_for_power", [-1.0 if n is None else float(n) for n in plans], EXACT,
            "seed plans: five direct cases (textbook, a 16-pair family, a stricter level, zero spread, beyond "
            "the cap), then judge's not-significant pairs (-1: none)")


# ---------------------------------------------------------------------------------
# computing, storing, comparing


def _compute(jitter: float = 0.0) -> dict[str, Golden]:
    out = _Entries()
    with torch.random.fork_rng(devices=[]):  # a loss may draw from torch's global stream
        torch.manual_seed(0)
        _loss_goldens(out, jitter)
        _sim_goldens(out, jitter)
        _model_goldens(out, jitter)
    _metric_goldens(out)
    _stats_goldens(out)
    return dict(sorted(out.goldens.items()))


def compute_goldens() -> dict[str, Golden]:
    """Every golden, name -> :class:`Golden`, from fixed seeded inputs (deterministic).

    Runs in float64 on the CPU under the current torch thread count; torch's global
    random state is left as it was.
    """
    return _compute()


def _recorded_with() -> dict[str, Any]:
    import scipy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def write_goldens(path: Path, goldens: dict[str, Golden]) -> None:
    """Write ``goldens`` to ``path`` atomically (JSON, kind ``xmrbench.goldens``)."""
    from xmrbench.store.store import atomic_write_text

    entries = {}
    for name in sorted(goldens):
        g = goldens[name]
        values = np.asarray(g.values, dtype=np.float64).ravel()
        if not np.isfinite(values).all():
            raise ValueError(f"golden {name!r} holds NaN or inf; it cannot be stored")
        entries[name] = {
            "description": g.description,
            "rtol": float(g.rtol),
            "atol": float(g.atol),
            "values": [float(v) for v in values],  # repr of a float64 reads back bit for bit
        }
    doc = {"kind": GOLDENS_KIND, "version": GOLDENS_VERSION, "recorded_with": _recorded_with(), "goldens": entries}
    atomic_write_text(Path(path), json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_goldens(path: Path) -> dict[str, Golden]:
    """The goldens stored in ``path``; :class:`StoreError` naming the file if it is missing,
    corrupt or not a goldens file."""
    from xmrbench.gate.references import read_document

    where = str(path)
    doc = read_document(Path(path), kind=GOLDENS_KIND, version=GOLDENS_VERSION, what="goldens")
    entries = doc.get("goldens")
    if not isinstance(entries, dict):
        raise StoreError("corrupted goldens file (no 'goldens' mapping)", where=where)
    goldens = {}
    for name, entry in entries.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("values"), list)
            and all(_number(v) for v in entry["values"])
            and all(_number(entry.get(k)) and entry[k] >= 0 for k in ("rtol", "atol"))
            and isinstance(entry.get("description", ""), str)
        )
        if not ok:
            raise StoreError("corrupted goldens file (an entry lacks finite values, rtol or atol)",
                             where=where, key=f"goldens.{name}")
        goldens[name] = Golden(name, np.asarray(entry["values"], dtype=np.float64), float(entry["rtol"]),
                               float(entry["atol"]), entry.get("description", ""))
    return goldens


@dataclass(frozen=True)
class GoldenDiff:
    """The comparison of one golden: largest absolute and relative differences, the
    reference's tolerances, and a problem (missing on one side, changed shape) or None.

    ``ratio`` is the largest ``|a - b| / (atol + rtol * |ref|)`` over the entries (inf
    where the allowance is 0 and the values differ); above 1 means beyond tolerance.
    """

    name: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    problem: str | None
    ratio: float = 0.0

    @property
    def beyond(self) -> bool:
        return self.problem is not None or self.ratio > 1.0


def _differences(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """``|cur - ref|`` elementwise; 0 where both are the same non-finite value, inf where
    only one side is finite or the two are different non-finite values."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(cur - ref)
    same = (ref == cur) | (np.isnan(ref) & np.isnan(cur))
    diff[same] = 0.0
    diff[~same & ~np.isfinite(diff)] = np.inf
    return diff


def compare_goldens(reference: dict[str, Golden], current: dict[str, Golden]) -> list[GoldenDiff]:
    """One :class:`GoldenDiff` per name in either mapping, sorted by name, with the
    reference's tolerances. A name on one side only or a changed shape is a problem."""
    diffs = []
    for name in sorted(set(reference) | set(current)):
        if name not in reference:
            cur = current[name]
            diffs.append(GoldenDiff(name, math.inf, math.inf, cur.rtol, cur.atol,
                                    "new golden; record it with xmrbench check --update", math.inf))
            continue
        ref = reference[name]
        if name not in current:
            diffs.append(GoldenDiff(name, math.inf, math.inf, ref.rtol, ref.atol, "golden no longer computed", math.inf))
            continue
        a = np.asarray(ref.values, dtype=np.float64).ravel()
        b = np.asarray(current[name].values, dtype=np.float64).ravel()
        if a.shape != b.shape:
            diffs.append(GoldenDiff(name, math.inf, math.inf, ref.rtol, ref.atol,
                                    f"shape changed from {a.shape[0]} to {b.shape[0]} values", math.inf))
            continue
        diff = _differences(a, b)
        allowed = ref.atol + ref.rtol * np.abs(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / np.abs(a))
            ratio = np.where(diff == 0, 0.0, diff / allowed)
        diffs.append(GoldenDiff(
            name,
            float(diff.max(initial=0.0)),
            float(np.where(np.isnan(rel), math.inf, rel).max(initial=0.0)),
            ref.rtol,
            ref.atol,
            None,
            float(np.where(np.isnan(ratio), math.inf, ratio).max(initial=0.0)),
        ))
    return diffs


def format_diff(diff: GoldenDiff) -> str:
    """One line describing a comparison."""
    if diff.problem is not None:
        return f"{diff.name}: {diff.problem}"
    state = "BEYOND" if diff.beyond else "ok"
    return (f"{diff.name}: {state} max |a-b| {diff.max_abs:.3g}, max rel {diff.max_rel:.3g} "
            f"({diff.ratio:.3g} of the tolerance rtol {diff.rtol:g}, atol {diff.atol:.3g})")


def main(argv: list[str] | None = None) -> int:
    """``python -m xmrbench.gate.goldens --write PATH`` records the goldens; ``--check PATH``
    compares with them (exit 1 if any is beyond tolerance, 2 on a bad file)."""
    parser = argparse.ArgumentParser(prog="python -m xmrbench.gate.goldens", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="PATH", type=Path, help="record the goldens into PATH")
    action.add_argument("--check", metavar="PATH", type=Path, help="compare the goldens with PATH")
    parser.add_argument("--all", action="store_true", help="with --check, print every entry, not only those beyond")
    args = parser.parse_args(argv)
    try:
        if args.write is not None:
            goldens = compute_goldens()
            write_goldens(args.write, goldens)
            print(f"wrote {len(goldens)} goldens to {args.write}")
            return 0
        reference = read_goldens(args.check)
        diffs = compare_goldens(reference, compute_goldens())
    except XmrbenchError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    beyond = [d for d in diffs if d.beyond]
    for diff in diffs if args.all else beyond:
        print(format_diff(diff))
    worst = max((d.ratio for d in diffs if d.problem is None), default=0.0)
    print(f"{len(diffs)} goldens, {len(beyond)} beyond tolerance; the closest used {worst:.3g} of its tolerance")
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())
