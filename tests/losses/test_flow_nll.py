"""Gaussian NLL of a flow and its bits/dim."""

from __future__ import annotations

import math

import pytest
import torch

from ipoke.losses.flow import bits_per_dim, gaussian_nll, reference_nll


def test_gaussian_nll_exact_values():
    r = torch.tensor([[1.0, 2.0], [0.0, -3.0]]).view(2, 2, 1, 1)
    log_det = torch.tensor([0.5, -1.0])
    # Sample 0: 0.5 * 5 - 0.5 = 2.0; sample 1: 0.5 * 9 + 1 = 5.5; mean 3.75.
    assert gaussian_nll(r, log_det).item() == pytest.approx(3.75)


def test_gaussian_nll_matches_the_normal_log_prob_up_to_the_constant():
    generator = torch.Generator().manual_seed(0)
    r = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    log_det = torch.randn(5, generator=generator, dtype=torch.float64)
    dims = 3 * 4 * 4
    log_prob = torch.distributions.Normal(0.0, 1.0).log_prob(r).flatten(1).sum(1) + log_det
    expected = -log_prob.mean() - 0.5 * dims * math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_nll(r, log_det), expected)


def test_gaussian_nll_is_fp32_for_bf16_inputs_and_has_gradients():
    r = torch.randn(2, 4, requires_grad=True)
    loss = gaussian_nll(r.bfloat16(), torch.zeros(2, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    loss.backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


def test_bits_per_dim_of_a_standard_normal():
    dims = 2048
    # For r ~ N(0, I) and log_det = 0 the NLL without constant is D / 2; bits/dim = (0.5 + 0.5 log 2 pi) / log 2.
    value = bits_per_dim(torch.tensor(reference_nll(dims)), dims)
    assert value.item() == pytest.approx((0.5 + 0.5 * math.log(2 * math.pi)) / math.log(2))
    assert reference_nll(dims) == 1024.0
    # A flow that doubles every dimension gains exactly one bit per dimension.
    assert (bits_per_dim(torch.tensor(1024.0 - dims * math.log(2)), dims) - value).item() == pytest.approx(-1.0)
