"""The instance loss of DPC: a hand-checked case, a naive loop on random inputs, edge
cases, gradients, and the shared classifier."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.core.losses.instance import SharedInstanceClassifier, instance_loss

DTYPES = [torch.float32, torch.float64]


def naive_cross_entropy(logits: torch.Tensor, classes: torch.Tensor) -> list[float]:
    """-log softmax(logits_i)[c_i] for each row, by explicit sums of exponentials."""
    out = []
    for i in range(logits.shape[0]):
        row = [float(x) for x in logits[i]]
        top = max(row)
        log_norm = top + math.log(sum(math.exp(x - top) for x in row))
        out.append(log_norm - row[int(classes[i])])
    return out


def test_hand_checked_case():
    # image: scores (0, ln 3) for 2 classes, true class 1 -> -log(3/4)
    # captions: (ln 2, 0) true class 0 -> -log(2/3); (0, 0) true class 1 -> log 2
    img_logits = torch.tensor([[0.0, math.log(3.0)]])
    txt_logits = torch.tensor([[math.log(2.0), 0.0], [0.0, 0.0]])
    img_classes, txt_classes = torch.tensor([1]), torch.tensor([0, 1])
    mean = instance_loss(img_logits, txt_logits, img_classes, txt_classes)
    expected_mean = math.log(4 / 3) + (math.log(3 / 2) + math.log(2.0)) / 2
    assert mean.item() == pytest.approx(expected_mean, abs=1e-6)
    total = instance_loss(img_logits, txt_logits, img_classes, txt_classes, reduction="sum")
    assert total.item() == pytest.approx(math.log(4 / 3) + math.log(3 / 2) + math.log(2.0), abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_loop(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n_classes = 7
    img_logits = torch.randn(5, n_classes, generator=gen, dtype=dtype) * 3
    txt_logits = torch.randn(11, n_classes, generator=gen, dtype=dtype) * 3
    img_classes = torch.randint(0, n_classes, (5,), generator=gen)
    txt_classes = torch.randint(0, n_classes, (11,), generator=gen)
    img_terms = naive_cross_entropy(img_logits, img_classes)
    txt_terms = naive_cross_entropy(txt_logits, txt_classes)
    got_mean = instance_loss(img_logits, txt_logits, img_classes, txt_classes)
    got_sum = instance_loss(img_logits, txt_logits, img_classes, txt_classes, reduction="sum")
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert got_mean.item() == pytest.approx(sum(img_terms) / 5 + sum(txt_terms) / 11, rel=tol, abs=tol)
    assert got_sum.item() == pytest.approx(sum(img_terms) + sum(txt_terms), rel=tol, abs=tol)
    assert got_mean.dtype == dtype and got_mean.dim() == 0


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    img_logits = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    txt_logits = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    img_classes, txt_classes = torch.tensor([0, 2, 3]), torch.tensor([0, 0, 2, 2, 3, 1])
    assert torch.autograd.gradcheck(
        lambda a, b: instance_loss(a, b, img_classes, txt_classes), (img_logits, txt_logits)
    )


def test_edge_cases():
    logits = torch.randn(2, 3)
    # no captions: only the visual term
    only_img = instance_loss(logits, torch.zeros(0, 3), torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long))
    assert only_img.item() == pytest.approx(sum(naive_cross_entropy(logits, torch.tensor([0, 2]))) / 2, abs=1e-6)
    # a single item, one class: probability 1, loss 0
    single = instance_loss(torch.randn(1, 1), torch.randn(1, 1), torch.tensor([0]), torch.tensor([0]))
    assert single.item() == pytest.approx(0.0, abs=1e-7)
    # tied scores over C classes: log C per item
    tied = instance_loss(torch.zeros(2, 5), torch.zeros(3, 5), torch.tensor([0, 1]), torch.tensor([2, 3, 4]))
    assert tied.item() == pytest.approx(2 * math.log(5), abs=1e-6)
    with pytest.raises(ValueError, match="must lie in"):
        instance_loss(logits, logits, torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="must be"):
        instance_loss(logits, logits, torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class counts"):
        instance_loss(logits, torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        instance_loss(logits, logits, torch.tensor([0, 1]), torch.tensor([0, 1]), reduction="max")  # type: ignore[arg-type]


def test_shared_classifier_uses_one_weight_for_both_modalities():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    clf = SharedInstanceClassifier(dim=6, n_classes=5)
    img_emb = torch.randn(3, 6, generator=gen, requires_grad=True)
    txt_emb = torch.randn(4, 6, generator=gen, requires_grad=True)
    img_classes, txt_classes = torch.tensor([0, 1, 4]), torch.tensor([0, 0, 1, 4])
    loss = clf(img_emb, txt_emb, img_classes, txt_classes)
    weight = clf.fc.weight
    expected = instance_loss(img_emb @ weight.T, txt_emb @ weight.T, img_classes, txt_classes)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert clf.n_classes == 5 and clf.fc.bias is None
    for grad in (weight.grad, img_emb.grad, txt_emb.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the weight's gradient is the sum of both modalities' contributions
    w = weight.detach().clone().requires_grad_(True)
    visual = instance_loss(img_emb.detach() @ w.T, torch.zeros(0, 5), img_classes, torch.zeros(0, dtype=torch.long))
    (g_visual,) = torch.autograd.grad(visual, w)
    w2 = weight.detach().clone().requires_grad_(True)
    textual = instance_loss(torch.zeros(0, 5), txt_emb.detach() @ w2.T, torch.zeros(0, dtype=torch.long), txt_classes)
    (g_textual,) = torch.autograd.grad(textual, w2)
    assert torch.allclose(weight.grad, g_visual + g_textual, atol=1e-6)
