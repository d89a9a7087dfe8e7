"""Reconstruction losses and image-quality measures: L1, SSIM, PSNR, the latent KL term.

All functions take images ``(N, C, H, W)`` or videos ``(B, T, C, H, W)`` in [-1, 1] (videos are folded into
``(B * T, C, H, W)``) and are differentiable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ipoke.metrics.image_quality import MAX_PSNR_DB
from ipoke.models.distributions import DiagonalGaussian


def _as_images(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 5:
        return x.flatten(0, 1)
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) or videos (B, T, C, H, W), got shape {tuple(x.shape)}")
    return x


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements; any matching shapes. Returns a scalar."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    return (prediction - target).abs().mean()


def motion_weighted_l1_loss(prediction: torch.Tensor, target: torch.Tensor, first_frame: torch.Tensor,
                            motion_weight: float) -> torch.Tensor:
    """L1 that up-weights pixels which change from the first frame: ``w = 1 + motion_weight * |x_t - x0|``.

    In poking data most pixels are static, so a plain L1 is minimised early by copying ``x0`` everywhere; the weight
    (normalised to mean 1 per batch) keeps the moving parts from being drowned out. ``motion_weight = 0`` is
    :func:`l1_loss`.

    Args:
        prediction: ``(B, T, C, H, W)``.
        target: ``(B, T, C, H, W)``.
        first_frame: ``(B, C, H, W)``, the frame motion is measured from.
        motion_weight: Extra weight per unit of absolute change (values in [-1, 1]).
    """
    if motion_weight == 0:
        return l1_loss(prediction, target)
    change = (target - first_frame.unsqueeze(1)).abs().mean(dim=2, keepdim=True).detach()
    weight = 1.0 + motion_weight * change
    return ((prediction - target).abs() * weight).mean() / weight.mean()


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(prediction: torch.Tensor, target: torch.Tensor, *, value_range: tuple[float, float] = (-1.0, 1.0),
         window_size: int = 11, sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, per channel, averaged over the valid region.

    Inputs are first mapped from ``value_range`` to [0, 1]: SSIM's luminance term assumes non-negative intensities,
    and computed directly on [-1, 1] data it rates an image and its negative as similar (both factors turn negative).
    The window shrinks to the image size for tiny images.

    Args:
        prediction: ``(N, C, H, W)`` or ``(B, T, C, H, W)``.
        target: Same shape.
        value_range: ``(low, high)`` of the inputs.
        window_size: Gaussian window width.
        sigma: Gaussian window standard deviation.
        reduction: ``"mean"`` (scalar) or ``"none"`` (one value per image ``(N,)`` / ``(B * T,)``).

    Returns:
        SSIM in [-1, 1] (1 for identical inputs).
    """
    low, high = value_range
    x = (_as_images(prediction).float() - low) / (high - low)
    y = (_as_images(target).float() - low) / (high - low)
    if x.shape != y.shape:
        raise ValueError(f"prediction {tuple(x.shape)} and target {tuple(y.shape)} differ in shape")
    size = min(window_size, x.shape[-1], x.shape[-2])
    window = _gaussian_window(size, sigma, x.shape[1], x.device, x.dtype)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=x.shape[1])

    # Always fp32, also inside a bf16 autocast region (training with precision="bf16-mixed"): the variances are
    # differences of nearly equal local means, which bf16's 8-bit mantissa cancels away. Under bf16 autocast the
    # SSIM loss of near-identical smooth frames was 0.10 instead of 0.012, and on an H100 the quickstart's GPU
    # autoencoder learned to paint a checkerboard over every frame (held-out SSIM 0.59).
    with torch.autocast(device_type=x.device.type, enabled=False):
        mu_x, mu_y = filt(x), filt(y)
        var_x = filt(x * x) - mu_x.pow(2)
        var_y = filt(y * y) - mu_y.pow(2)
        cov = filt(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1)
                                                                 * (var_x + var_y + c2))
    return _reduced(ssim_map.flatten(1).mean(dim=1), reduction)


def _reduced(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f'Unknown reduction "{reduction}"; choose "mean" or "none"')


def psnr(prediction: torch.Tensor, target: torch.Tensor, *, data_range: float = 2.0,
         reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, computed per image and then averaged.

    Args:
        prediction: ``(N, C, H, W)`` or ``(B, T, C, H, W)``.
        target: Same shape.
        data_range: Value range of the inputs (2 for [-1, 1]).
        reduction: ``"mean"`` (scalar) or ``"none"`` (one value per image).

    Returns:
        PSNR, capped as the evaluation's at ``MAX_PSNR_DB`` (58.92 dB, 8-bit rounding noise; identical images
        would give inf).
    """
    x, y = _as_images(prediction).float(), _as_images(target).float()
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    per_image = (10 * torch.log10(data_range ** 2 / mse)).clamp(max=MAX_PSNR_DB)
    return _reduced(per_image, reduction)  # an unknown reduction raises, as in ssim (it returned per-image values)


def kl_loss(posterior: DiagonalGaussian) -> torch.Tensor:
    """KL to N(0, I), summed over latent channels and averaged over batch and latent positions (scalar).

    This is the reference's normalisation (sum over channels, mean over ``B x 8 x 8``); with its weight of 1e-7 the
    term only keeps the posterior variance from collapsing to exactly zero.
    """
    positions = posterior.mean[0, 0].numel()
    return posterior.kl().mean() / positions
