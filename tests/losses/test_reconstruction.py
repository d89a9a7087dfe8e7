"""L1, SSIM, PSNR and KL against values known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from ipoke.losses.reconstruction import kl_loss, l1_loss, psnr, ssim
from ipoke.models.distributions import DiagonalGaussian


def test_l1_value():
    assert l1_loss(torch.zeros(2, 3), torch.full((2, 3), 0.5)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        l1_loss(torch.zeros(2, 3), torch.zeros(3, 2))


def test_ssim_identical_is_one_and_drops_with_noise():
    x = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert ssim(noisy, x).item() < 0.9
    assert ssim(noisy, x, reduction="none").shape == (8,)
    assert ssim(-x, x).item() < 0.1  # a negative image is not similar


def test_ssim_of_constant_images_has_closed_form():
    # Constant images a and b (in [0, 1] after mapping from [-1, 1]): variances and covariance vanish,
    # SSIM = (2ab + c1) / (a^2 + b^2 + c1).
    a, b = 0.6, 0.3
    c1 = 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = ssim(torch.full((1, 3, 16, 16), 2 * a - 1), torch.full((1, 3, 16, 16), 2 * b - 1))
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_psnr_value():
    # MSE 0.01 with data range 2: 10 log10(4 / 0.01) = 26.02 dB.
    x = torch.zeros(1, 3, 8, 8)
    assert psnr(x + 0.1, x).item() == pytest.approx(10 * math.log10(400), rel=1e-5)


def test_kl_closed_form_and_reference_normalisation():
    mean = torch.full((2, 4, 8, 8), 1.0)
    logvar = torch.zeros(2, 4, 8, 8)
    posterior = DiagonalGaussian(mean, logvar)
    # KL per element = 0.5 * mean^2 = 0.5; summed over 4 channels, averaged over batch and 8x8 positions: 2.
    assert posterior.kl().tolist() == [0.5 * 4 * 64] * 2
    assert kl_loss(posterior).item() == pytest.approx(2.0)
    assert DiagonalGaussian(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).kl().item() == 0.0


def test_ssim_stays_fp32_inside_bf16_autocast():
    # Smooth, near-identical frames (like the synthetic backgrounds): bf16 convolutions cancel the local variances.
    generator = torch.Generator().manual_seed(0)
    x = (0.3 + 0.05 * torch.randn(4, 3, 32, 32, generator=generator)).clamp(-1, 1)
    y = (x + 0.01 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    expected = ssim(x, y)
    assert 0.95 < expected < 0.999
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim(x, y)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, expected, atol=1e-6, rtol=0)


def test_psnr_refuses_an_unknown_reduction_as_ssim_does():
    # psnr(..., reduction="sum") returned the per-image values without a word.
    x = torch.zeros(3, 3, 8, 8)
    assert psnr(x + 0.1, x, reduction="none").shape == (3,)
    with pytest.raises(ValueError, match='Unknown reduction "sum"'):
        psnr(x + 0.1, x, reduction="sum")
