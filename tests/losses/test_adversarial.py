"""Hinge losses, R1 penalty, feature matching and the adaptive weight, on hand-computable inputs."""

from __future__ import annotations

import pytest
import torch

from ipoke.losses.adversarial import (
    adaptive_weight,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    r1_penalty,
)


def test_hinge_values():
    real = torch.tensor([2.0, 0.5])   # relu(1 - x) = 0, 0.5
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + x) = 0, 1
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


def test_r1_of_linear_discriminator_is_squared_weight_norm():
    weight = torch.tensor([1.0, -2.0, 3.0])
    x = torch.randn(5, 3, requires_grad=True)
    logits = x @ weight
    assert r1_penalty(logits, x).item() == pytest.approx(14.0)


def test_r1_is_differentiable_with_respect_to_discriminator():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    x = torch.randn(4, 2, requires_grad=True)
    r1_penalty(x @ weight, x).backward()
    torch.testing.assert_close(weight.grad, 2 * weight.detach())


def test_feature_matching_detaches_real_features():
    real = [torch.ones(2, 3, requires_grad=True), torch.zeros(2, 4, requires_grad=True)]
    fake = [torch.zeros(2, 3, requires_grad=True), torch.full((2, 4), 2.0, requires_grad=True)]
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((1.0 + 2.0) / 2)
    loss.backward()
    assert real[0].grad is None
    assert fake[0].grad is not None


def test_adaptive_weight_is_gradient_norm_ratio():
    last = torch.tensor([1.0, 1.0], requires_grad=True)
    rec = (3.0 * last).sum()      # gradient (3, 3)
    gan = (1.5 * last).sum()      # gradient (1.5, 1.5)
    assert adaptive_weight(rec, gan, last).item() == pytest.approx(2.0, rel=1e-3)
