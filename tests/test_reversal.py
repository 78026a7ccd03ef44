"""Gradient reversal and its progress schedule against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from xmrbench.core.reversal import progress_coefficient, reverse_gradient


def test_forward_is_the_identity_and_backward_reverses_and_scales():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.3 * w, rtol=0, atol=1e-15)  # d/dx of sum(w * x) is w, reversed


def test_a_discriminator_behind_it_pushes_the_encoder_the_other_way():
    """One step of the same loss: the encoder's gradient through the reversal is the
    negative of its gradient without it; the discriminator's is unchanged."""
    torch.manual_seed(0)
    enc, disc = torch.nn.Linear(5, 4).double(), torch.nn.Linear(4, 1).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    target = (torch.arange(8) % 2).double()
    grads = []
    for coef in (None, 1.0):
        enc.zero_grad()
        disc.zero_grad()
        h = enc(x) if coef is None else reverse_gradient(enc(x), coef)
        torch.nn.functional.binary_cross_entropy_with_logits(disc(h).squeeze(1), target).backward()
        grads.append((enc.weight.grad.clone(), disc.weight.grad.clone()))
    assert torch.allclose(grads[1][0], -grads[0][0], atol=1e-15) and torch.equal(grads[1][1], grads[0][1])


def test_progress_coefficient_by_hand():
    assert progress_coefficient(0.0) == 0.0
    assert progress_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1, abs=1e-15)
    assert progress_coefficient(1.0, gamma=10) == pytest.approx(0.9999092, abs=1e-7)
    with pytest.raises(ValueError):
        progress_coefficient(1.5)
