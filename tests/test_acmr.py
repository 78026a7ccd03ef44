"""ACMR: the triplet sampler against a naive loop, each loss term against a naive
per-sample loop and a hand-worked case, the adversary's gradient reaching the
projectors reversed (or not at all), the classifier step at rate mu * lambda,
Algorithm 1's k:1 alternation, an exact resume of both optimisers, config and data
errors, and a small labelled fit (through the engine) well above chance mAP."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from xmrbench.core.losses.acmr import (
    adversarial_loss,
    imd_loss,
    imi_loss,
    label_matrix,
    reg_loss,
    triplet_masks,
)
from xmrbench.core.metrics.labels import mean_average_precision, relevance_from_labels
from xmrbench.core.models.acmr import ACMR, IMAGE_MODALITY, TEXT_MODALITY, count_classes
from xmrbench.core.models.base import InputDims, TextBatch, TrainBatch
from xmrbench.core.models.registry import MODELS
from xmrbench.core.reversal import progress_coefficient
from xmrbench.data.dataset import RetrievalData, Split
from xmrbench.engine.acmr_method import ACMRMethod
from xmrbench.engine.inputs import PreparedData
from xmrbench.engine.methods import METHODS, Progress, StepContext
from xmrbench.engine.train import train_and_evaluate
from xmrbench.errors import ConfigError, DataError, TrainingError
from xmrbench.recipe.config import validate_cell_config

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: thread start-up dominates otherwise

CPU = torch.device("cpu")
DIMS = InputDims(image_dim=7, vocab_size=1, text_dim=5)
SMALL = {"image_hidden": 9, "text_hidden": 8, "dim": 4, "adversary_hidden": 3}


# --------------------------------------------------------------------------------------
# naive references
# --------------------------------------------------------------------------------------


def label_sets(labels: torch.Tensor) -> list[set[int]]:
    """Each row's classes as a Python set (class ids or multi-hot rows)."""
    if labels.ndim == 1:
        return [{int(c)} for c in labels]
    return [{c for c in range(labels.shape[1]) if int(labels[i, c])} for i in range(labels.shape[0])]


def naive_triplets(anchor_sets: list[set[int]], cand_sets: list[set[int]]) -> list[tuple[int, int, int]]:
    """Every (anchor, positive, negative): positive shares a class, negative shares none."""
    out = []
    for i, a in enumerate(anchor_sets):
        for j, p in enumerate(cand_sets):
            for k, n in enumerate(cand_sets):
                if a & p and not a & n:
                    out.append((i, j, k))
    return out


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(sum((a[d] - b[d]) ** 2 for d in range(a.shape[0])))


def naive_imi(img, txt, img_sets, txt_sets, *, lam, margin, reduction="sum"):
    total = img.new_zeros(())
    for anchors, cands, a_sets, c_sets in ((img, txt, img_sets, txt_sets), (txt, img, txt_sets, img_sets)):
        triplets = naive_triplets(a_sets, c_sets)
        part = img.new_zeros(())
        for i, j, k in triplets:
            part = part + l2(anchors[i], cands[j]) + lam * torch.clamp(margin - l2(anchors[i], cands[k]), min=0)
        if reduction == "mean" and triplets:
            part = part / len(triplets)
        total = total + part
    return total


def naive_cross_entropy(logits: torch.Tensor, target: list[float]) -> torch.Tensor:
    """-sum_c target_c log softmax(logits)_c for one item, written out."""
    norm = torch.log(sum(torch.exp(logits[c]) for c in range(logits.shape[0])))
    return -sum(target[c] * (logits[c] - norm) for c in range(logits.shape[0]))


def naive_imd(img_logits, txt_logits, img_sets, txt_sets):
    n_classes = img_logits.shape[1]
    total = img_logits.new_zeros(())
    for logits, sets in ((img_logits, img_sets), (txt_logits, txt_sets)):
        part = img_logits.new_zeros(())
        for row, classes in zip(logits, sets, strict=True):
            part = part + naive_cross_entropy(row, [1.0 / len(classes) if c in classes else 0.0
                                                    for c in range(n_classes)])
        total = total + part / len(sets)
    return total


def naive_adv(img_logits, txt_logits):
    """Eq. 1 with image target 01 and text target 10."""
    img = sum(naive_cross_entropy(row, [0.0, 1.0]) for row in img_logits) / len(img_logits)
    txt = sum(naive_cross_entropy(row, [1.0, 0.0]) for row in txt_logits) / len(txt_logits)
    return img + txt


def naive_reg(weights):
    return sum(torch.sqrt(sum(w[r, c] ** 2 for r in range(w.shape[0]) for c in range(w.shape[1]))) for w in weights)


def random_labels(gen: torch.Generator, n: int, n_classes: int, multi: bool) -> torch.Tensor:
    if not multi:
        return torch.randint(0, n_classes, (n,), generator=gen)
    rows = (torch.rand(n, n_classes, generator=gen) < 0.3).to(torch.uint8)
    rows[torch.arange(n), torch.randint(0, n_classes, (n,), generator=gen)] = 1  # at least one label
    return rows


# --------------------------------------------------------------------------------------
# (a) the triplet sampler
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_masks_match_a_naive_loop(multi, seed):
    gen = torch.Generator().manual_seed(seed)
    n_classes = 4
    img_labels = random_labels(gen, 9, n_classes, multi)
    txt_labels = random_labels(gen, 7, n_classes, multi)
    pos, neg = triplet_masks(label_matrix(img_labels, n_classes), label_matrix(txt_labels, n_classes))
    img_sets, txt_sets = label_sets(img_labels), label_sets(txt_labels)
    for i, a in enumerate(img_sets):
        for j, b in enumerate(txt_sets):
            shares = bool(a & b)
            assert bool(pos[i, j]) == shares, (i, j, a, b)
            assert bool(neg[i, j]) == (not shares), (i, j, a, b)  # never a same-label negative
    # the triplets the masks imply are exactly the naive ones, for both anchors
    for masks, anchors, cands in (((pos, neg), img_sets, txt_sets), ((pos.t(), neg.t()), txt_sets, img_sets)):
        implied = [(i, j, k) for i in range(len(anchors)) for j in range(len(cands)) for k in range(len(cands))
                   if masks[0][i, j] and masks[1][i, k]]
        assert implied == naive_triplets(anchors, cands)
        for i, j, k in implied:
            assert anchors[i] & cands[j] and not anchors[i] & cands[k]


def test_multi_label_partial_overlap_is_a_positive():
    img = torch.tensor([[1, 1, 0]], dtype=torch.uint8)
    txt = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.uint8)
    pos, neg = triplet_masks(label_matrix(img, 3), label_matrix(txt, 3))
    assert pos.tolist() == [[True, False, True]]
    assert neg.tolist() == [[False, True, False]]


# --------------------------------------------------------------------------------------
# (b) each loss term against naive loops and hand-worked numbers
# --------------------------------------------------------------------------------------


def test_imi_hand_worked_case():
    # 1-d projections; image 0 and text 0 are class 0, image 1 and text 1 class 1; margin 2.
    # image anchors: (0: d+ = 1, d- = 0 -> 1 + 2 lam), (1: d+ = 3, d- = 2 -> 3 + 0);
    # text anchors:  (0: d+ = 1, d- = 2 -> 1 + 0),     (1: d+ = 3, d- = 0 -> 3 + 2 lam)
    img = torch.tensor([[0.0], [3.0]])
    txt = torch.tensor([[1.0], [0.0]])
    labels = label_matrix(torch.tensor([0, 1]), 2)
    assert imi_loss(img, txt, labels, labels, lam=0.5, margin=2.0).item() == pytest.approx(8 + 4 * 0.5)
    # mean: each direction has 2 triplets -> (4 + 1) / 2 + (4 + 1) / 2
    assert imi_loss(img, txt, labels, labels, lam=0.5, margin=2.0, reduction="mean").item() == pytest.approx(5.0)


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_imi_matches_naive_triplet_sum(multi, reduction):
    gen = torch.Generator().manual_seed(3)
    n_classes = 3
    img_labels = random_labels(gen, 6, n_classes, multi)
    txt_labels = img_labels[torch.tensor([0, 1, 2, 3, 4, 5, 2])]  # a 7th text sharing image 2's labels
    img = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    txt = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    got = imi_loss(img, txt, label_matrix(img_labels, n_classes), label_matrix(txt_labels, n_classes),
                   lam=0.3, margin=2.5, reduction=reduction)
    want = naive_imi(img, txt, label_sets(img_labels), label_sets(txt_labels), lam=0.3, margin=2.5,
                     reduction=reduction)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_imi_without_triplets_is_zero_and_has_finite_gradients():
    img = torch.randn(3, 4, requires_grad=True)
    txt = img.detach().clone().requires_grad_(True)  # zero distances on the diagonal
    one_class = label_matrix(torch.zeros(3, dtype=torch.long), 1)  # no negatives: no triplet
    assert imi_loss(img, txt, one_class, one_class, lam=1.0, margin=1.0).item() == 0.0
    labels = label_matrix(torch.tensor([0, 1, 1]), 2)
    loss = imi_loss(img, txt, labels, labels, lam=1.0, margin=10.0)
    loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


@pytest.mark.parametrize("multi", [False, True])
def test_imd_matches_naive_cross_entropy(multi):
    gen = torch.Generator().manual_seed(4)
    n_classes = 5
    img_labels = random_labels(gen, 6, n_classes, multi)
    txt_labels = random_labels(gen, 4, n_classes, multi)
    img_logits = torch.randn(6, n_classes, generator=gen, dtype=torch.float64)
    txt_logits = torch.randn(4, n_classes, generator=gen, dtype=torch.float64)
    got = imd_loss(img_logits, txt_logits, label_matrix(img_labels, n_classes), label_matrix(txt_labels, n_classes))
    want = naive_imd(img_logits, txt_logits, label_sets(img_labels), label_sets(txt_labels))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_imd_hand_worked_case():
    # uniform logits over 4 classes: every cross-entropy is ln 4, whatever the target
    logits = torch.zeros(2, 4)
    multi = label_matrix(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]]), 4)
    assert imd_loss(logits, logits, multi, multi).item() == pytest.approx(2 * math.log(4))
    # a two-label item with logits (ln 3, ln 1, -inf-ish, ...): target (1/2, 1/2) -> -(ln(3/4) + ln(1/4)) / 2
    logits = torch.tensor([[math.log(3.0), 0.0, -1e4, -1e4]])
    row = label_matrix(torch.tensor([[1, 1, 0, 0]]), 4)
    want = -(math.log(0.75) + math.log(0.25)) / 2
    assert imd_loss(logits, logits, row, row).item() == pytest.approx(2 * want, rel=1e-6)


def test_reg_matches_naive_frobenius_norms():
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen,
                                                                                   dtype=torch.float64)]
    assert reg_loss(weights).item() == pytest.approx(naive_reg(weights).item(), rel=1e-12)
    assert reg_loss([torch.tensor([[3.0, 0.0], [0.0, 4.0]])]).item() == pytest.approx(5.0)  # not squared


def test_adversarial_loss_matches_naive_and_uses_image_01_text_10():
    gen = torch.Generator().manual_seed(6)
    img_logits = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    txt_logits = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    assert adversarial_loss(img_logits, txt_logits).item() == pytest.approx(naive_adv(img_logits, txt_logits).item())
    assert adversarial_loss(torch.zeros(4, 2), torch.zeros(4, 2)).item() == pytest.approx(2 * math.log(2))
    assert (IMAGE_MODALITY, TEXT_MODALITY) == (1, 0)  # one-hot 01 for images, 10 for texts
    sure = adversarial_loss(torch.tensor([[0.0, 20.0]]), torch.tensor([[20.0, 0.0]]))
    wrong = adversarial_loss(torch.tensor([[20.0, 0.0]]), torch.tensor([[0.0, 20.0]]))
    assert sure.item() < 1e-6 and wrong.item() == pytest.approx(40.0, rel=1e-6)


def test_label_matrix_rejects_bad_labels():
    with pytest.raises(DataError, match="outside the 3 classes"):
        label_matrix(torch.tensor([0, 3]), 3)
    with pytest.raises(DataError, match="columns"):
        label_matrix(torch.ones(2, 4, dtype=torch.uint8), 3)
    with pytest.raises(DataError, match="no label"):
        label_matrix(torch.tensor([[1, 0], [0, 0]]), 2)
    with pytest.raises(DataError, match="integers"):
        label_matrix(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(DataError, match="shape"):
        label_matrix(torch.zeros(2, 2, 2, dtype=torch.long), 2)


# --------------------------------------------------------------------------------------
# the method on hand-made batches
# --------------------------------------------------------------------------------------


class _LabelledTrainSplit:
    """What ``prepare_training`` reads: ``split.extras["labels"]`` and a name."""

    def __init__(self, labels: np.ndarray):
        self.name = "train"
        self.split = Split(name="train", captions=[""] * len(labels), captions_per_image=1,
                           global_feats=np.zeros((len(labels), DIMS.image_dim), np.float32),
                           extras={"labels": labels})


def make_model(n_classes: int = 3, seed: int = 0, multi: bool = False) -> ACMR:
    torch.manual_seed(seed)
    model = ACMR(ACMR.Params(**SMALL), DIMS)
    labels = np.eye(n_classes, dtype=np.uint8) if multi else np.arange(n_classes)
    model.prepare_training(_LabelledTrainSplit(labels))
    return model


def train_config(**train):
    raw = {"model": {"name": "acmr", **SMALL}, "loss": None, "method": {"name": "acmr"},
           "train": {"grad_clip": None, **train}}
    return validate_cell_config(raw, where="test").train


def make_method(model: ACMR, train: dict | None = None, **params) -> ACMRMethod:
    method = ACMRMethod(ACMRMethod.Params(**params), model=model, loss=None, train=train_config(**(train or {})))
    method.setup()
    return method


def make_batch(seed: int, n: int = 6, n_classes: int = 3, multi: bool = False) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    labels = random_labels(gen, n, n_classes, multi)
    return TrainBatch(
        images=torch.randn(n, DIMS.image_dim, generator=gen),
        text=TextBatch(vectors=torch.randn(n, DIMS.text_dim, generator=gen)),
        labels=(torch.arange(n), torch.arange(n)),
        image_ids=torch.arange(n), caption_ids=torch.arange(n),
        extras={"labels": labels},
    )


def context(step: int, steps_per_epoch: int = 100, n_epochs: int = 10) -> StepContext:
    epoch, batch = divmod(step, steps_per_epoch)
    return StepContext(Progress(epoch, n_epochs, batch, steps_per_epoch), CPU, "test")


def naive_terms(model: ACMR, batch: TrainBatch, *, alpha: float, beta: float, lam: float, margin: float):
    """``L_emb`` and ``L_adv`` of the batch from the naive loops (differentiable)."""
    img_emb = model.encode_images(batch.images)
    txt_emb = model.encode_texts(batch.text)
    sets = label_sets(batch.extras["labels"])
    emb = (alpha * naive_imi(img_emb, txt_emb, sets, sets, lam=lam, margin=margin)
           + beta * naive_imd(model.label_logits(img_emb), model.label_logits(txt_emb), sets, sets)
           + sum(torch.sqrt((w * w).sum()) for w in model.projector_weights()))
    adv = naive_adv(model.modality_logits(img_emb), model.modality_logits(txt_emb))
    return emb, adv


def grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


# --------------------------------------------------------------------------------------
# (c) the adversary's gradient at the projectors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reverse", "schedule", "multi"), [
    (True, "constant", False), (False, "constant", False), (True, "released", False), (True, "constant", True)])
def test_embedding_step_gradient_is_emb_minus_adv(reverse, schedule, multi):
    hyper = dict(alpha=0.7, beta=1.3, lam=0.2, margin=1.5)
    model = make_model(multi=multi)
    method = make_method(model, train={"optimizer": "sgd", "momentum": 0.0}, reverse_to_projectors=reverse,
                         adversary_schedule=schedule, **hyper)
    batch = make_batch(7, multi=multi)
    step = 37  # an embedding step (37 mod 6 = 1), fraction 0.037
    reference = copy.deepcopy(model)
    emb, adv = naive_terms(reference, batch, **hyper)
    m = batch.images.shape[0]
    params = reference.embedding_parameters()
    g_emb, g_adv = grads(emb / m, params), grads(adv / m, params)
    coef = progress_coefficient(step / 1000) if schedule == "released" else 1.0
    value = method.step(context(step), batch)
    assert value == pytest.approx(emb.item(), rel=1e-5)  # step returns L_emb
    for param, ge, ga in zip(model.embedding_parameters(), g_emb, g_adv, strict=True):
        ga = torch.zeros_like(param) if ga is None else ga  # the label classifier: no adversarial term
        want = ge - coef * ga if reverse else ge
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-6)
    if reverse:  # the adversary's gradient is really there (the check above is not vacuous)
        assert max(float(ga.abs().max()) for ga in g_adv if ga is not None) > 1e-4


def test_embedding_step_leaves_the_modality_classifier_alone():
    model = make_model()
    method = make_method(model)
    before = [p.detach().clone() for p in model.adversary_parameters()]
    proj_before = [p.detach().clone() for p in model.embedding_parameters()]
    method.step(context(0), make_batch(1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.adversary_parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(proj_before, model.embedding_parameters(), strict=True))


# --------------------------------------------------------------------------------------
# (d) the classifier step: a descent on L_adv / m at rate mu * lambda
# --------------------------------------------------------------------------------------


def test_classifier_step_is_sgd_at_mu_times_lambda():
    model = make_model()
    mu, lam = 0.3, 0.05
    method = make_method(model, train={"optimizer": "sgd", "momentum": 0.0}, mu=mu, lam=lam)
    batch = make_batch(2)
    reference = copy.deepcopy(model)
    _, adv = naive_terms(reference, batch, alpha=0.1, beta=0.1, lam=lam, margin=1.0)
    d_params = reference.adversary_parameters()
    g_adv = grads(adv / batch.images.shape[0], d_params)
    proj_before = [p.detach().clone() for p in model.embedding_parameters()]
    method.step(context(5), batch)  # k = 5: step 5 is the first classifier step
    for param, start, g in zip(model.adversary_parameters(), d_params, g_adv, strict=True):
        # step 8: theta_D + mu lambda grad_D (L_emb - L_adv) / m = theta_D - mu lambda grad_D L_adv / m
        torch.testing.assert_close(param.detach(), start.detach() - mu * lam * g, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(proj_before, model.embedding_parameters(), strict=True))


def test_classifier_step_rate_reaches_adam_too():
    # Adam's first step moves every parameter by about its learning rate, whatever the
    # gradient's scale: the mu * lambda must sit in the rate, not in the gradient.
    model = make_model()
    method = make_method(model, train={"optimizer": "adam", "lr": 0.02}, lam=0.05)
    assert method.adv_optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.05)
    assert method.emb_optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    before = [p.detach().clone() for p in model.adversary_parameters()]
    method.step(context(5), make_batch(3))
    moves = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(model.adversary_parameters(), before,
                                                                       strict=True)])
    assert float(moves.max()) == pytest.approx(0.001, rel=1e-3)


# --------------------------------------------------------------------------------------
# (e) k:1 alternation over the engine's steps
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "expected"), [(5, [5, 11]), (2, [2, 5, 8, 11]), (1, [1, 3, 5, 7, 9, 11])])
def test_alternation_over_an_epoch(k, expected):
    model = make_model()
    method = make_method(model, k=k)
    classifier_steps = []
    for step in range(12):
        d_before = [p.detach().clone() for p in model.adversary_parameters()]
        e_before = [p.detach().clone() for p in model.embedding_parameters()]
        method.step(context(step, steps_per_epoch=12, n_epochs=1), make_batch(step))
        d_moved = not all(torch.equal(a, b) for a, b in zip(d_before, model.adversary_parameters(), strict=True))
        e_moved = not all(torch.equal(a, b) for a, b in zip(e_before, model.embedding_parameters(), strict=True))
        assert d_moved != e_moved  # each step is one kind or the other
        if d_moved:
            classifier_steps.append(step)
    assert classifier_steps == expected


def test_alternation_counts_global_steps_across_epochs():
    method = make_method(make_model())
    # 4 batches per epoch: global steps 5 and 11 are (epoch 1, batch 1) and (epoch 2, batch 3)
    kinds = [method.is_classifier_step(Progress(e, 3, b, 4).step) for e in range(3) for b in range(4)]
    assert [i for i, c in enumerate(kinds) if c] == [5, 11]


# --------------------------------------------------------------------------------------
# (f) resume: both optimisers and the alternation
# --------------------------------------------------------------------------------------


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_resumes_exactly():
    batches = [make_batch(100 + s) for s in range(14)]
    spe = 7  # two epochs of seven steps; classifier steps at 5 and 11
    model_a = make_model(seed=3)
    method_a = make_method(model_a, train={"optimizer": "adam", "lr": 0.01})
    for step in range(7):
        method_a.step(context(step, spe, 2), batches[step])
    method_a.epoch_curves()  # the engine reads the curves before it saves
    saved_model = _roundtrip(model_a.state_dict())
    saved_method = _roundtrip(method_a.state_dict())
    losses_a = [method_a.step(context(step, spe, 2), batches[step]) for step in range(7, 14)]

    model_b = ACMR(ACMR.Params(**SMALL), DIMS)  # no prepare_training: the weights size the classifier
    model_b.load_state_dict(saved_model)
    method_b = make_method(model_b, train={"optimizer": "adam", "lr": 0.01})
    method_b.load_state_dict(saved_method)
    losses_b = [method_b.step(context(step, spe, 2), batches[step]) for step in range(7, 14)]

    assert losses_a == losses_b
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for key in ("embedding_optimizer", "classifier_optimizer"):
        state_a, state_b = method_a.state_dict()[key]["state"], method_b.state_dict()[key]["state"]
        assert state_a.keys() == state_b.keys() and state_a  # both optimisers have stepped and kept state
        for index in state_a:
            for name in state_a[index]:
                assert torch.equal(torch.as_tensor(state_a[index][name]), torch.as_tensor(state_b[index][name]))
    assert method_a.epoch_curves() == method_b.epoch_curves()


def test_epoch_curves_are_means_since_the_last_call():
    model = make_model()
    method = make_method(model)
    emb_values = [method.step(context(s), make_batch(s)) for s in range(3)]
    curves = method.epoch_curves()
    assert set(curves) == {"emb_loss", "adv_loss"}
    assert curves["emb_loss"] == pytest.approx(sum(emb_values) / 3)
    assert curves["adv_loss"] > 0
    assert all(math.isnan(v) for v in method.epoch_curves().values())  # reset: nothing since


# --------------------------------------------------------------------------------------
# configuration and data errors
# --------------------------------------------------------------------------------------


def test_config_errors():
    base = {"model": {"name": "acmr"}, "loss": None}
    with pytest.raises(ConfigError, match="imi and imd are both false"):
        validate_cell_config({**base, "method": {"name": "acmr", "imi": False, "imd": False}}, where="t")
    with pytest.raises(ConfigError, match="method.k"):
        validate_cell_config({**base, "method": {"name": "acmr", "k": 0}}, where="t")
    with pytest.raises(ConfigError, match="method.adversary_schedule"):
        validate_cell_config({**base, "method": {"name": "acmr", "adversary_schedule": "linear"}}, where="t")
    with pytest.raises(ConfigError, match="method.name"):
        validate_cell_config({"model": {"name": "two_branch_embedding"}, "loss": None, "method": {"name": "acmr"}},
                             where="t")
    with pytest.raises(ConfigError, match="model.text_input"):
        ACMR(ACMR.Params(), InputDims(image_dim=4, vocab_size=10))
    assert METHODS["acmr"] is ACMRMethod and MODELS["acmr"] is ACMR


def test_training_needs_the_label_classifier_and_labels():
    model = ACMR(ACMR.Params(**SMALL), DIMS)
    with pytest.raises(TrainingError, match="prepare_training"):
        make_method(model)
    with pytest.raises(DataError, match="no labels"):
        model.prepare_training(type("S", (), {"name": "train", "split": Split("train", [""], 1,
                                                                                global_feats=np.zeros((1, 7)))})())
    method = make_method(make_model(n_classes=3))
    batch = make_batch(0)
    batch.extras["labels"] = torch.tensor([0, 1, 2, 3, 0, 1])
    with pytest.raises(DataError, match="outside the 3 classes"):
        method.step(context(0), batch)
    del batch.extras["labels"]
    with pytest.raises(TrainingError, match="no labels"):
        method.step(context(0), batch)


def test_count_classes():
    assert count_classes(np.array([0, 4, 2])) == 5
    assert count_classes(np.zeros((3, 7), np.uint8)) == 7
    for bad in (np.array([0.5, 1.0]), np.array([-1, 2]), np.array([], dtype=np.int64), np.zeros((2, 2, 2))):
        with pytest.raises(DataError):
            count_classes(bad)


def test_similarity_is_negated_euclidean_distance():
    model = make_model().eval()
    gen = torch.Generator().manual_seed(9)
    img, txt = torch.randn(4, 4, generator=gen), torch.randn(3, 4, generator=gen)
    sims = model.similarity(img, txt)
    for i in range(4):
        for j in range(3):
            assert sims[i, j].item() == pytest.approx(-l2(img[i], txt[j]).item(), rel=1e-6)
    torch.testing.assert_close(model.pair_scores(img[:3], txt), torch.diagonal(sims[:3]))


# --------------------------------------------------------------------------------------
# (g) a small labelled fit through the engine
# --------------------------------------------------------------------------------------


def _toy_split(name: str, n: int, n_classes: int, seed: int, multi: bool) -> Split:
    """Class-conditional Gaussians: image and text features are a class prototype (the
    mean of the item's classes' prototypes) plus noise; prototypes shared by all splits."""
    protos = np.random.default_rng(1234)
    img_protos, txt_protos = protos.normal(size=(n_classes, 24)), protos.normal(size=(n_classes, 16))
    rng = np.random.default_rng(seed)
    if multi:
        labels = (rng.random((n, n_classes)) < 0.1).astype(np.uint8)
        labels[np.arange(n), rng.integers(0, n_classes, n)] = 1
        weights = labels / labels.sum(1, keepdims=True)
    else:
        labels = rng.integers(0, n_classes, n)
        weights = np.eye(n_classes)[labels]
    img = weights @ img_protos + 0.5 * rng.normal(size=(n, 24))
    txt = weights @ txt_protos + 0.5 * rng.normal(size=(n, 16))
    return Split(name=name, captions=[""] * n, captions_per_image=1, global_feats=img.astype(np.float32),
                 text_feats=txt.astype(np.float32), extras={"labels": labels})


def _toy_data(n_classes: int, multi: bool) -> RetrievalData:
    splits = {"train": (300, 1), "dev": (60, 2), "test": (200, 3)}
    loaders = {name: (lambda s=name, n=n, seed=seed: _toy_split(s, n, n_classes, seed, multi))
               for name, (n, seed) in splits.items()}
    return RetrievalData(name="toy-labelled", fingerprint=f"toy-labelled-{n_classes}-{multi}", loaders=loaders)


@pytest.mark.parametrize("multi", [False, True])
def test_small_labelled_fit_beats_chance(multi):
    n_classes = 6 if multi else 4
    raw = {
        "model": {"name": "acmr", "image_hidden": 32, "text_hidden": 24, "dim": 16, "adversary_hidden": 8},
        "loss": None,
        # the per-triplet mean and a light L_reg keep the terms on one scale (docs/acmr.md)
        "method": {"name": "acmr", "alpha": 1.0, "beta": 1.0, "imi_reduction": "mean", "reg": 0.01},
        "train": {"epochs": 8, "batch_size": 64, "lr": 0.003, "select_by": "map", "grad_clip": None},
        "eval": {"protocols": ["test_labels"]},
    }
    cfg = validate_cell_config(raw, where="test")
    prepared = PreparedData(_toy_data(n_classes, multi), cfg.data, "global", "features")
    out = train_and_evaluate(cfg, 0, prepared, device=CPU)
    assert len(out.curves["emb_loss"]) == len(out.curves["adv_loss"]) == 8
    assert out.curves["emb_loss"][-1] < out.curves["emb_loss"][0]

    # mAP recomputed from the selected weights with the label metrics
    model = MODELS["acmr"](cfg.model.params, prepared.dims)
    model.load_state_dict(out.state_dict)
    model.eval()
    test = prepared.split("test")
    labels = torch.as_tensor(np.asarray(test.split.extras["labels"]))
    with torch.no_grad():
        idx = np.arange(test.n_images)
        sims = model.similarity(model.encode_images(test.image_batch(idx)), model.encode_texts(test.text_batch(idx)))
    relevance = relevance_from_labels(labels, labels)
    i2t = mean_average_precision(sims, relevance)
    t2i = mean_average_precision(sims.t().contiguous(), relevance.t().contiguous())
    assert out.metrics["test_labels"]["i2t_map"] == pytest.approx(i2t, abs=1e-6)
    # chance: a random ranking's AP is about the fraction of relevant items, i.e. the
    # class frequency (about 1 / 4 for the four balanced single labels; about 0.36 for the
    # multi-hot rows, where any shared label makes an item relevant)
    chance = float(relevance.float().mean())
    assert chance < 0.4
    assert min(i2t, t2i) > chance + 0.35, (i2t, t2i, chance)
